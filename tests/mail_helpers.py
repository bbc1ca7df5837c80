"""A real SMTP server on 127.0.0.1 (aiosmtpd) for the delivery e-mail tests, and the SMS simulator served beside it.

    from tests import mail_helpers as mh

    smtp = mh.smtp           # fixture: a running server; the app's SMTP settings point at it (SMTP_TLS none)
    smtp.messages            # what it received: email.message.EmailMessage objects, in order
    smtp.stop() / start()    # an outage, and the server back on the same port
"""
from __future__ import annotations

import email
import email.policy
import socket
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler:
    def __init__(self, box: SmtpServer):
        self.box = box

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd's name)
        if address.endswith("@refused.example"):
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.box.lock:
            self.box.messages.append(message)
            self.box.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), session.authenticated))
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, user: str | None = None, password: str | None = None):
        self.port = free_port()
        self.lock = threading.Lock()
        self.messages: list = []
        self.envelopes: list = []
        self.user, self.password = user, password
        self.controller: Controller | None = None

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user \
            and auth_data.password.decode() == self.password
        return AuthResult(success=ok)

    def start(self) -> None:
        kwargs = {}
        if self.user:
            kwargs = {"authenticator": self._authenticate, "auth_require_tls": False, "auth_required": True}
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait(self, count: int, timeout: float = 15) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.messages)} e-mails received, expected {count}")


def configure(app, server: SmtpServer, **extra) -> None:
    app.config.update({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": server.port, "SMTP_TLS": "none",
                       "SMTP_FROM": "卡盟商城 <shop@kameng.example>", "SMTP_USER": None, "SMTP_PASSWORD": None,
                       "SMTP_TIMEOUT": 5, **extra})


@pytest.fixture
def smtp(app):
    server = SmtpServer()
    server.start()
    saved = {k: app.config.get(k) for k in ("SMTP_HOST", "SMTP_PORT", "SMTP_TLS", "SMTP_FROM", "SMTP_USER",
                                            "SMTP_PASSWORD", "SMTP_TIMEOUT", "NOTICE_RETRY_SECONDS")}
    configure(app, server)
    try:
        yield server
    finally:
        server.stop()
        app.config.update(saved)


def text_of(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_of(message) -> str:
    return message.get_body(preferencelist=("html",)).get_content()

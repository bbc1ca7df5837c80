"""Helpers shared by the Open API tests: serve an app over real HTTP, sign test-client calls, record callbacks."""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import func, select
from werkzeug.serving import make_server

from app.extensions import db
from app.ledger.models import Account
from app.openapi import service as openapi
from app.openapi import signing
from app.openapi.client import OpenApiClient
from app.orders.models import Order


@contextlib.contextmanager
def served(flask_app):
    """Serve `flask_app` on 127.0.0.1:<free port> (threaded) for the duration; yields the base URL."""
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def new_key(agent, allow: str | None = None, name: str = "test") -> tuple:
    """(ApiKey, plain secret) for an agent."""
    return openapi.create_key(agent.id, name, allow)


def api_client(base_url: str, key, secret: str) -> OpenApiClient:
    return OpenApiClient(base_url, key.app_key, secret, timeout=60)


def signed_call(client, key, secret: str, method: str, path: str, body=None, *, raw: bytes | None = None,
                query: str = "", headers: dict | None = None, remote_addr: str | None = None, **sign_kw):
    """A signed request through the Flask test client. `body` is JSON-encoded; `raw` is sent as is."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    all_headers = signing.signed_headers(key.app_key, secret, method, path, data, **sign_kw)
    if data:
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    kwargs = {}
    if remote_addr:
        kwargs["environ_base"] = {"REMOTE_ADDR": remote_addr}
    url = path + (f"?{query}" if query else "")
    return client.open(url, method=method, data=data, headers=all_headers, **kwargs)


def assert_error(response, status: int, code: str | None = None) -> dict:
    """A JSON error body {"error": {"code", "message"}} with this status (and code, when given)."""
    assert response.status_code == status, (response.status_code, _text(response))
    body = response.get_json() if hasattr(response, "get_json") else response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def _text(response) -> str:
    return response.get_data(as_text=True) if hasattr(response, "get_data") else response.text


def order_count() -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(Order))


def wallet_total() -> int:
    """Sum of every agent wallet's cached balance."""
    db.session.rollback()
    return db.session.scalar(select(func.coalesce(func.sum(Account.balance), 0)).where(Account.kind == "wallet"))


@dataclass
class Receiver:
    """A tiny HTTP server that records POSTs and answers a scripted list of statuses (then `default`)."""
    statuses: list[int] = field(default_factory=list)
    default: int = 200
    requests: list[dict] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition | None = None

    def url(self, path: str = "/notify/kameng") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self
        self._arrived = threading.Condition(self._lock)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._arrived:
                    receiver.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                              "body": body})
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                    receiver._arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout)
            return list(self.requests)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)


def in_fresh_context(flask_app, call, *args, **kwargs):
    """Run a test-client call in its own app context, as a real server would.

    The `app` fixture keeps one app context pushed, and test-client requests reuse it, so `g` (where Flask-Login
    caches the loaded user) would carry one client's login into another client's request.
    """
    with flask_app.app_context():
        return call(*args, **kwargs)

"""The outbound fence (app/outbound.py): with OUTBOUND_ALLOW_PRIVATE off, no spelling of loopback, private or metadata
addresses is ever connected to; the address checked is the address connected to (no DNS rebinding); redirects are
never followed; answers are capped in size and time. Shown through the Open API callback (a signed order with a
notify_url, its callback job run inline and by a real RQ worker), the Kameng-to-Kameng supplier client, the payout
adapter, and the client itself.

A small http.server on 127.0.0.1 plays every destination and records what reaches it.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from sqlalchemy import func, select

from app import outbound
from app.extensions import db
from app.network import payout
from app.openapi.models import CallbackAttempt
from app.orders.models import Order
from app.suppliers.adapters.base import Connection, UpstreamUnreachable
from app.suppliers.adapters.kameng import KamengAdapter
from tests.openapi_helpers import assert_error, new_key, signed_call
from workers.runner import run_worker

ORDERS = "/open/v1/orders"
GLOBAL_ADDRESS = "93.184.215.14"  # a global unicast address (example.com's); connecting to it may fail here

LOOPBACK_SPELLINGS = ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "017700000001",
                      "127.1"]


# --- a recording destination ---------------------------------------------------------------------------------

class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that gave up (the caps at work): not news
        pass


class Destination:
    """HTTP on 127.0.0.1:<free port>. Paths: /big-unsized* 2 MiB without a length (read until close), /big* 2 MiB
    (Content-Length), /redirect* and /open/v1/* 302 to /elsewhere (an upstream Kameng that moved), /slow answers
    after 3 s, /trickle sends a body byte every 0.1 s for 4 s, /trickle-headers the same with a header; anything
    else 200 {"ok": true}."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        destination = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                destination.requests.append((self.command, self.path))
                path = self.path.split("?")[0]
                if path.startswith("/big-unsized"):
                    self.close_connection = True
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(32):
                        self.wfile.write(b"y" * 65536)
                elif path.startswith("/big"):
                    self._body(b"x" * (2 * 1024 * 1024))
                elif path.startswith(("/redirect", "/open/v1/")):
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{destination.port}/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/slow":
                    time.sleep(3)
                    self._body(b"{}")
                elif path == "/trickle-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    for _ in range(40):
                        self.wfile.write(b"a")
                        time.sleep(0.1)
                    self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")
                    self.close_connection = True
                elif path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", "40")
                    self.end_headers()
                    for _ in range(40):
                        self.wfile.write(b"z")
                        self.wfile.flush()
                        time.sleep(0.1)
                else:
                    self._body(b'{"ok": true}')

            def _body(self, body: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str = "/notify", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def destination():
    d = Destination()
    yield d
    d.stop()


@pytest.fixture
def fenced(app):
    """Private addresses refused, as in production (the test app allows them for its simulators)."""
    app.config["OUTBOUND_ALLOW_PRIVATE"] = False
    try:
        yield app
    finally:
        app.config["OUTBOUND_ALLOW_PRIVATE"] = True


@pytest.fixture
def world(f):
    agent = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=9000))
    product = f.product(face_price=10_000, cost=8_000, secrets=10)
    key, secret = new_key(agent)
    return {"agent": agent, "product": product, "key": key, "secret": secret}


def place(client, w: dict, notify_url: str):
    body = {"out_trade_no": uuid.uuid4().hex, "product_id": w["product"].id, "quantity": 1, "notify_url": notify_url}
    return signed_call(client, w["key"], w["secret"], "POST", ORDERS, body)


def attempts_for(order_no: str) -> list[CallbackAttempt]:
    db.session.rollback()
    db.session.expire_all()
    return list(db.session.scalars(select(CallbackAttempt).join(Order, Order.id == CallbackAttempt.order_id)
                                   .where(Order.order_no == order_no).order_by(CallbackAttempt.attempt)))


# Which addresses sockets connect to, seen through CPython's audit events (observed, not patched).
_connects: list | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect" and _connects is not None:
        _connects.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture
def connects():
    global _connects
    _connects = []
    try:
        yield _connects
    finally:
        _connects = None


# --- Open API callbacks through the real entry points --------------------------------------------------------

@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_a_callback_to_any_loopback_spelling_never_arrives(fenced, client, world, destination, host):
    response = place(client, world, destination.url(host=host))
    assert response.status_code == 201, response.get_data(as_text=True)  # the order itself goes through
    order = response.get_json()
    [attempt] = attempts_for(order["order_no"])  # the callback job ran (inline outbox, no Redis)
    assert destination.requests == []
    assert not attempt.succeeded and attempt.http_status is None
    assert attempt.error.startswith("destination refused: loopback address"), attempt.error
    assert attempt.next_attempt_at is not None  # a failed attempt like any other, retried later


def test_a_callback_by_the_rq_worker_to_a_numeric_loopback_never_arrives(fenced, client, world, destination,
                                                                          redis_url):
    fenced.config["REDIS_URL"] = redis_url
    try:
        order = place(client, world, destination.url(host="2130706433")).get_json()
        assert attempts_for(order["order_no"]) == []  # queued, not sent by the web request
        run_worker(["high"], burst=True, with_cron=False)
    finally:
        fenced.config["REDIS_URL"] = None
    [attempt] = attempts_for(order["order_no"])
    assert destination.requests == []
    assert attempt.error == "destination refused: loopback address 127.0.0.1 for 2130706433"


def test_with_private_allowed_the_same_callback_arrives(app, client, world, destination):
    """The control: the destination works and records, so the refusals above are the fence's doing."""
    order = place(client, world, destination.url(host="localhost")).get_json()
    [attempt] = attempts_for(order["order_no"])
    assert attempt.succeeded and attempt.http_status == 200
    assert destination.requests == [("POST", "/notify")]


def test_a_redirecting_callback_is_not_followed_and_counts_as_failed(app, client, world, destination):
    order = place(client, world, destination.url("/redirect")).get_json()
    [attempt] = attempts_for(order["order_no"])
    assert (attempt.succeeded, attempt.http_status) == (False, 302)
    assert destination.requests == [("POST", "/redirect")]  # /elsewhere never asked


def test_a_slow_callback_receiver_hits_the_time_cap(app, client, world, destination):
    app.config["OUTBOUND_DEADLINE_SECONDS"] = 1
    try:
        started = time.monotonic()
        order = place(client, world, destination.url("/slow")).get_json()
        took = time.monotonic() - started
    finally:
        app.config["OUTBOUND_DEADLINE_SECONDS"] = 30
    [attempt] = attempts_for(order["order_no"])
    assert not attempt.succeeded and attempt.http_status is None
    assert attempt.error.startswith(("ReadTimeout", "deadline exceeded")), attempt.error
    assert took < 2.9  # the receiver answers after 3 s


def test_dns_rebinding_of_a_callback_connects_only_to_the_checked_address(fenced, client, world, destination,
                                                                          monkeypatch, connects):
    """The name answers a global address when checked and 127.0.0.1 on any later lookup: there is no later
    lookup; the socket goes to the checked address (unreachable here) and never to 127.0.0.1."""
    answers = iter([[(socket.AF_INET, GLOBAL_ADDRESS)]])
    looked_up = []

    def rebinding_resolver(host, port):
        looked_up.append(host)
        return next(answers, [(socket.AF_INET, "127.0.0.1")])

    monkeypatch.setattr(outbound, "resolve", rebinding_resolver)
    fenced.config["OUTBOUND_DEADLINE_SECONDS"] = 1
    try:
        order = place(client, world, destination.url(host="rebind.example")).get_json()
    finally:
        fenced.config["OUTBOUND_DEADLINE_SECONDS"] = 30
    [attempt] = attempts_for(order["order_no"])
    assert looked_up == ["rebind.example"]
    assert destination.requests == []
    assert not attempt.succeeded
    assert [a for a in connects if a[1] == destination.port] == [(GLOBAL_ADDRESS, destination.port)]


def test_order_time_validation_of_notify_url(fenced, client, world):
    for bad in ("ftp://example.com/cb", "http:///no-host", "example.com/cb", "http://[::1/cb",
                "http://example.com:99999/cb", "https://example.com/" + "a" * 600, "javascript:alert(1)", 12):
        response = place(client, world, bad)
        assert_error(response, 400, "invalid_notify_url")
    assert db.session.scalar(select(func.count()).select_from(Order)) == 0
    # Where a well-formed URL points is checked when the callback connects, not here (names change).
    response = place(client, world, "http://10.0.0.1/notify")
    assert response.status_code == 201
    [attempt] = attempts_for(response.get_json()["order_no"])
    assert attempt.error == "destination refused: private address 10.0.0.1"


# --- the address check ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("address,reason", [
    ("100.100.100.200", "shared address"), ("169.254.169.254", "link-local address"), ("10.1.2.3", "private"),
    ("192.168.1.1", "private"), ("172.16.0.1", "private"), ("127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"),
    ("::1", "loopback"), ("fe80::1", "link-local"), ("fe80::1%lo", "link-local"),
    ("64:ff9b::7f00:1", "NAT64"), ("2002:7f00:1::1", "6to4"), ("::ffff:10.0.0.1", "private"),
    ("::ffff:100.100.100.200", "shared address"), ("fc00::1", "private"), ("224.0.0.1", "multicast"),
    ("198.18.0.1", "private"), ("::7f00:1", "IPv4-compatible"),
])
def test_the_address_check_refuses(address, reason):
    assert reason in (outbound.refusal_reason(address) or "")


@pytest.mark.parametrize("address", [GLOBAL_ADDRESS, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_the_address_check_allows_global_addresses(address):
    assert outbound.refusal_reason(address) is None


@pytest.mark.parametrize("host", ["100.100.100.200", "169.254.169.254", "10.0.0.1", "192.168.0.1", "[::1]",
                                  "[fe80::1]", "[64:ff9b::7f00:1]"])
def test_the_client_refuses_before_connecting(fenced, host, connects):
    with pytest.raises(outbound.DestinationRefused, match="^destination refused: "):
        outbound.session(timeout=1).get(f"http://{host}/latest/meta-data/")
    assert [a for a in connects if a[1] == 80] == []


def test_a_name_with_any_private_answer_is_refused_once_without_retries(fenced, monkeypatch, connects):
    calls = []

    def resolver(host, port):
        calls.append(host)
        return [(socket.AF_INET, GLOBAL_ADDRESS), (socket.AF_INET, "10.0.0.7")]

    monkeypatch.setattr(outbound, "resolve", resolver)
    with pytest.raises(outbound.DestinationRefused, match="private address 10.0.0.7 for mixed.example"):
        outbound.session().get("http://mixed.example/")
    assert calls == ["mixed.example"] and [a for a in connects if a[1] == 80] == []
    assert not isinstance(outbound.DestinationRefused("x"), OSError)  # so urllib3 never retries it


def test_only_http_and_https(fenced):
    for url in ("file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://example.com/"):
        with pytest.raises(requests.exceptions.InvalidSchema):
            outbound.session().get(url)


def test_proxies_from_the_environment_are_ignored(app, destination, monkeypatch):
    proxy = Destination()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url(""))
        monkeypatch.setenv("ALL_PROXY", proxy.url(""))
        assert outbound.session().get(destination.url("/direct")).json() == {"ok": True}
        assert proxy.requests == [] and destination.requests == [("GET", "/direct")]
    finally:
        proxy.stop()


# --- redirects, size and time, private addresses allowed -----------------------------------------------------

def test_a_redirect_comes_back_unfollowed(app, destination):
    response = outbound.session().get(destination.url("/redirect"))
    assert response.status_code == 302 and response.headers["Location"].endswith("/elsewhere")
    again = outbound.session().get(destination.url("/redirect"), allow_redirects=True)  # asking changes nothing
    assert again.status_code == 302
    assert destination.requests == [("GET", "/redirect")] * 2


def kameng_adapter(destination, path: str = "") -> KamengAdapter:
    return KamengAdapter(Connection(supplier_id=9, protocol="kameng", endpoint=destination.url(path), app_key="k",
                                    secret="s", timeout=5))


def test_the_kameng_client_treats_a_redirect_as_failure(app, destination):
    with pytest.raises(UpstreamUnreachable, match="HTTP 302: redirect not followed"):
        kameng_adapter(destination).query_balance()
    assert destination.requests == [("GET", "/open/v1/balance")]


@pytest.mark.parametrize("path", ["/big", "/big-unsized"])
def test_an_oversized_answer_is_cut_and_fails_cleanly(app, destination, path):
    with pytest.raises(outbound.ResponseTooLarge, match="response too large"):
        outbound.session().get(destination.url(path))
    big = outbound.session(max_bytes=4 * 1024 * 1024).get(destination.url(path))  # a larger cap, e.g. bills
    assert len(big.content) == 2 * 1024 * 1024


def test_an_oversized_upstream_answer_is_an_unreachable_upstream(app, destination):
    with pytest.raises(UpstreamUnreachable, match="response too large"):
        kameng_adapter(destination, "/big").query_balance()
    assert destination.requests == [("GET", "/big/open/v1/balance")]


def test_a_slow_server_hits_the_read_timeout_and_a_trickling_one_the_deadline(app, destination):
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        outbound.session(timeout=0.5).get(destination.url("/slow"))
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(outbound.DeadlineExceeded, match="deadline exceeded"):
        outbound.session(deadline=1).get(destination.url("/trickle"))  # every byte within the read timeout
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(outbound.DeadlineExceeded, match="deadline exceeded"):
        outbound.session(deadline=1).get(destination.url("/trickle-headers"))  # the watchdog cuts it
    assert time.monotonic() - started < 2


def test_a_payout_to_a_loopback_bank_is_refused_and_unknown(fenced, destination):
    saved = {k: fenced.config.get(k) for k in ("PAYOUT_URL", "PAYOUT_KEY")}
    fenced.config.update(PAYOUT_URL=destination.url(""), PAYOUT_KEY="k")
    try:
        result = payout.transfer("W1", 100, "6222020000000000000", "张三")
    finally:
        fenced.config.update(saved)
    assert result.status == "unknown" and "destination refused: loopback address" in result.reason
    assert destination.requests == []


def test_answers_within_the_caps_read_as_usual(app, destination):
    response = outbound.session().post(destination.url("/fine"), data=json.dumps({"a": 1}))
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert destination.requests == [("POST", "/fine")]


# --- https: the socket is pinned, the name still drives SNI and the certificate check --------------------------

def _self_signed(name: str, folder) -> tuple[str, str]:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_connects_to_the_pinned_address_and_verifies_the_name(app, destination, monkeypatch, tmp_path):
    import ssl

    cert, key = _self_signed("kameng.test", tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names_asked: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names_asked.append(name)
    destination.server.socket = context.wrap_socket(destination.server.socket, server_side=True)
    looked_up = []

    def resolver(host, port):  # kameng.test is a name only this test knows
        looked_up.append(host)
        return [(socket.AF_INET, "127.0.0.1")]

    monkeypatch.setattr(outbound, "resolve", resolver)

    response = outbound.session().get(f"https://kameng.test:{destination.port}/tls", verify=cert)
    assert response.json() == {"ok": True} and names_asked == ["kameng.test"] and looked_up == ["kameng.test"]
    with pytest.raises(requests.exceptions.SSLError):  # the certificate names kameng.test, not the address
        outbound.session().get(f"https://127.0.0.1:{destination.port}/tls", verify=cert)
    assert destination.requests == [("GET", "/tls")]

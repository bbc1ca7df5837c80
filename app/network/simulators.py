"""Two small HTTP simulators (WSGI) for development and tests: a three-element identity provider and a bank
payout channel. Both check the request signature (app.network.realname.sign) and answer by a deterministic rule.

- IDV: POST /v1/three-elements {"name", "id_number", "bank_card"} → {"result": "match"|"mismatch", "ref"}.
  Rule: a bank card ending in 0 does not match; anything else matches.
- Payout: POST /v1/transfers {"out_no", "amount", "card", "name"} → {"status": "success"|"failed", "ref", "reason"}.
  Rule: a card ending in 4 fails (account frozen); a card ending in 7 answers only after `slow_seconds`
  (a timeout for the caller; the transfer itself succeeds). Idempotent per out_no: the same out_no returns the
  first result and pays once (`executed` counts real transfers).
- Payout status: POST /v1/transfers/query {"out_no"} → {"status": "success"|"failed"|"not_found", "ref", "reason"}
  (`queries` counts them). `bounce(out_no)` turns a sent transfer into failed (the bank returned it, 退票).
- `hold()` keeps new transfer requests waiting at the door, not yet booked (`held` counts them: a request on its
  way to the bank); `release(drop=...)` lets them in, or drops them unbooked with a 503 (lost on the way).
"""
from __future__ import annotations

import hmac
import json
import threading
import time
import uuid

from werkzeug.wrappers import Request, Response

from app.network.realname import sign


class _SignedJsonApp:
    path = "/"
    extra_paths: tuple[str, ...] = ()

    def __init__(self, key: str):
        self.key = key
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        request = Request(environ)
        if request.method != "POST" or (request.path != self.path and request.path not in self.extra_paths):
            return _json({"error": "not found"}, 404)(environ, start_response)
        body = request.get_data()
        ts, nonce = request.headers.get("X-Timestamp", ""), request.headers.get("X-Nonce", "")
        given = request.headers.get("X-Signature", "")
        if not self.key or not ts or not nonce or not hmac.compare_digest(given, sign(self.key, ts, nonce, body)):
            return _json({"error": "bad signature"}, 401)(environ, start_response)
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return _json({"error": "stale request"}, 401)(environ, start_response)
        try:
            payload = json.loads(body)
        except ValueError:
            return _json({"error": "bad json"}, 400)(environ, start_response)
        return self.route(request.path, payload)(environ, start_response)

    def route(self, path: str, payload: dict) -> Response:
        return self.handle(payload)

    def handle(self, payload: dict) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError


def _json(data: dict, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


class IdvSimulator(_SignedJsonApp):
    path = "/v1/three-elements"

    def __init__(self, key: str):
        super().__init__(key)
        self.calls = 0

    def handle(self, payload: dict) -> Response:
        card = str(payload.get("bank_card", ""))
        if not payload.get("name") or not payload.get("id_number") or not card:
            return _json({"error": "missing fields"}, 400)
        with self.lock:
            self.calls += 1
        result = "mismatch" if card.endswith("0") else "match"
        return _json({"result": result, "ref": "IDV" + uuid.uuid4().hex[:16]})


class PayoutSimulator(_SignedJsonApp):
    path = "/v1/transfers"
    extra_paths = ("/v1/transfers/query",)

    def __init__(self, key: str, slow_seconds: float = 3.0):
        super().__init__(key)
        self.slow_seconds = slow_seconds
        self.transfers: dict[str, dict] = {}
        self.executed = 0
        self.queries = 0
        self.held = 0
        self._door = threading.Event()
        self._door.set()
        self._drop_held = False

    def route(self, path: str, payload: dict) -> Response:
        if path == "/v1/transfers/query":
            return self.query(payload)
        return self.handle(payload)

    def query(self, payload: dict) -> Response:
        out_no = str(payload.get("out_no", ""))
        if not out_no:
            return _json({"error": "missing out_no"}, 400)
        with self.lock:
            self.queries += 1
            stored = self.transfers.get(out_no)
        if stored is None:
            return _json({"status": "not_found", "ref": None, "reason": None})
        return _json({k: stored[k] for k in ("status", "ref", "reason")})

    def bounce(self, out_no: str, reason: str = "收款行退票 (returned by the payee bank)") -> None:
        with self.lock:
            self.transfers[out_no].update(status="failed", reason=reason)

    def hold(self) -> None:
        self._drop_held = False
        self._door.clear()

    def release(self, drop: bool = False) -> None:
        self._drop_held = drop
        self._door.set()

    def handle(self, payload: dict) -> Response:
        out_no, card, amount = str(payload.get("out_no", "")), str(payload.get("card", "")), payload.get("amount")
        if not out_no or not card or not isinstance(amount, int) or amount <= 0:
            return _json({"error": "bad transfer"}, 400)
        if not self._door.is_set():
            with self.lock:
                self.held += 1
            self._door.wait()
            with self.lock:
                self.held -= 1
            if self._drop_held:
                return _json({"error": "request lost"}, 503)
        with self.lock:
            first = out_no not in self.transfers
            if first:
                if card.endswith("4"):
                    result = {"status": "failed", "ref": None, "reason": "收款卡状态异常 (payee card frozen)"}
                else:
                    self.executed += 1
                    result = {"status": "success", "ref": "PAY" + uuid.uuid4().hex[:16], "reason": None}
                self.transfers[out_no] = {"amount": amount, "card": card, **result}
            stored = self.transfers[out_no]
        if first and card.endswith("7"):
            time.sleep(self.slow_seconds)
        return _json({k: stored[k] for k in ("status", "ref", "reason")})


def serve(wsgi_app, host: str = "127.0.0.1", port: int = 0):
    """Start a threaded server for a simulator; returns (server, base_url). Stop with server.shutdown()."""
    from werkzeug.serving import make_server

    server = make_server(host, port, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, f"http://{host}:{server.server_port}"

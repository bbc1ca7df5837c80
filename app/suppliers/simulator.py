"""An upstream recharge supplier (直充上游) simulator: a small signed JSON API over HTTP, for development,
the demo and tests. Plain WSGI (like app/network/simulators.py), not a Kameng app; thread-safe.

Run it with `flask kameng supplier-sim --port 8703 --key K [--app-key A] [--latency-ms 50] [--balance 100000000]`.

Protocol (what a supplier adapter speaks; see app/suppliers/adapters/simulator.py)
-------------------------------------------------------------------------------------
Every /api request carries headers `X-App-Key` (our account at the upstream), `X-Timestamp` (unix seconds),
`X-Nonce` (16-64 printable characters, never reused within 600 s) and `X-Signature` = lowercase hex
HMAC-SHA256(secret, METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nSHA256HEX(BODY)) (app.openapi.signing; PATH without the
query string, BODY the raw bytes, empty for GET). A wrong app key, a bad signature, a timestamp more than 300 s
away or a replayed nonce: 401 {"error": "..."}. Bodies are JSON (UTF-8). Money is integer fen.

- `POST /api/recharge` {"order_no", "code", "account", "quantity", "notify_url"?}
  → 200 {"order_no", "status": "submitted"|"processing"|"success"|"failed", "trade_no", "message"}.
  Idempotent per order_no: a resubmit never credits again and answers the order's current state.
  A malformed request (missing fields, quantity outside 1..100) is 400 {"error"} and is not recorded.
  Definite failures answer 200 with status "failed": unknown code, product unavailable, stock too low, our
  balance at the upstream too low (insufficient funds), or a phone-credit account (codes CMCC-/CUCC-/CTCC-)
  that is not an 11-digit mobile number starting with 1.
- `POST /api/query` {"order_no"} → the same shape, or {"order_no", "status": "not_found"} for an order the
  upstream never recorded.
- `POST /api/cancel` {"order_no"} (撤单: withdraw an order before it credits) → the same shape, where the order
  stands afterwards: "failed" when it will never credit (withdrawn now; failed before; or never received, in
  which case the number is recorded as withdrawn and a later submit of it answers "failed" without crediting),
  "success" when it already credited, "submitted"/"processing" when the operator already has it and it can no
  longer be withdrawn (behaviour `cancel` "refuse"). A withdrawn order's final callback is sent as for a failure.
- `GET /api/balance` → {"balance": fen}.
- `GET /api/products` → {"products": [{"code", "name", "stock": int|null (null = unlimited), "price": fen,
  "available": bool}]}.
- Crediting an order (reaching success) debits the balance by price × quantity and the stock by quantity,
  exactly once per order_no (`credits` in /_sim/orders never exceeds 1).

Callbacks: when an order reaches a final state (success or failed), the upstream POSTs
{"order_no", "trade_no", "status", "message"} to the order's notify_url, signed exactly like a request (same
headers, same key; PATH is the notify_url's path), `callback_delay_ms` after it became final, and
`duplicate_callbacks` extra copies after that. A 2xx answer acknowledges it; there are no retries. A callback
can arrive after a query already told the caller the final state (a late callback).

Behaviour per product code (or "*" for every code without its own), set by `POST /_sim/behaviour`
{"code", "mode", "latency_ms", "pending_polls", "final", "answer", "complete_after_ms", "callback",
"callback_delay_ms", "duplicate_callbacks", "timeout_ms", "cancel"}; omitted keys take the defaults below. The
behaviour in force when an order is first submitted stays with that order.
- mode `success` (default): credit at once, answer success.
- mode `fail`: answer failed (上游拒绝); nothing credited.
- mode `pending`: answer `answer` ("processing" by default, or "submitted"); queries answer processing
  `pending_polls` times (default 2), then the order becomes `final` ("success" default, or "failed") and the
  query answers that. With `complete_after_ms`, the upstream also finishes the order by itself that long after
  the submit, if no query did first.
- mode `timeout`: record and finish the order (as `final`) at once, but answer only after `timeout_ms`
  (default 3000), longer than the caller's timeout; later queries show the real result.
- mode `unknown`: record and finish the order (as `final`), but answer HTTP 500 with a body that is not JSON.
- mode `garbage`: record and finish the order (as `final`), but answer 200 with a body that is not JSON.
- mode `error`: answer 503 WITHOUT recording anything (queries say not_found; a resubmit later is a new order).
- `latency_ms`: extra delay for this code's answers, on top of the global latency.
- `callback`: "final" (default: on the final state), "all" (also on the first answer: submitted/processing),
  "none" (never). true/false mean "final"/"none".
- `cancel`: "allow" (default: a pending order can be withdrawn by /api/cancel) or "refuse" (it cannot).
A slow supplier, for the delivery promise: mode `pending` with a large `pending_polls` keeps answering processing.

Control API (tests and demo; no signature, only from 127.0.0.1): `POST /_sim/behaviour` (above; answers the
behaviour stored), `GET /_sim/behaviour`, `POST /_sim/reset` (forget orders and behaviours; balance and
products back to the start), `POST /_sim/balance` {"balance"}, `POST /_sim/stock` {"code", "stock", "price",
"name"?, "available"?} (creates or updates a product), `GET /_sim/orders` → {"orders": [{"order_no", "trade_no",
"code", "account", "quantity", "amount", "status", "message", "credits", "submits", "queries",
"callbacks_sent", "callback_answers", "notify_url", "cancels"}]}, `GET /_sim/state` → {"balance", "products"}.
The global latency (`latency_ms`) applies to every /api answer, not to the control API.
"""
from __future__ import annotations

import copy
import hmac
import json
import re
import secrets
import threading
import time
from urllib.parse import urlsplit

import requests
from werkzeug.wrappers import Request, Response

from app.openapi import signing

MAX_SKEW_SECONDS = 300
NONCE = re.compile(r"[\x21-\x7e]{16,64}")
MOBILE = re.compile(r"1[3-9][0-9]{9}")
PHONE_PREFIXES = ("CMCC-", "CUCC-", "CTCC-")
STATUSES = ("submitted", "processing", "success", "failed")
MODES = ("success", "fail", "pending", "timeout", "unknown", "garbage", "error")
CALLBACK_TIMEOUT_SECONDS = 5

# code → (name, stock or None for unlimited, price in fen)
DEFAULT_PRODUCTS: dict[str, tuple[str, int | None, int]] = {
    "CMCC-10": ("中国移动话费 10 元", None, 985),
    "CMCC-30": ("中国移动话费 30 元", None, 2955),
    "CMCC-50": ("中国移动话费 50 元", None, 4925),
    "CMCC-100": ("中国移动话费 100 元", None, 9850),
    "CUCC-50": ("中国联通话费 50 元", None, 4930),
    "CTCC-50": ("中国电信话费 50 元", None, 4930),
    "TENCENT-QB-10": ("腾讯 Q 币 10 个", 500, 960),
    "TENCENT-QB-30": ("腾讯 Q 币 30 个", 500, 2880),
    "WZRY-60": ("王者荣耀 60 元点券", None, 5450),
    "IQIYI-MONTH": ("爱奇艺黄金会员月卡", 200, 1500),
    "YOUKU-MONTH": ("优酷 VIP 会员月卡", 200, 1450),
}

DEFAULT_BEHAVIOUR = {
    "mode": "success", "latency_ms": 0, "pending_polls": 2, "final": "success", "answer": "processing",
    "complete_after_ms": None, "callback": "final", "callback_delay_ms": 0, "duplicate_callbacks": 0,
    "timeout_ms": 3000, "cancel": "allow",
}


class BadRequest(Exception):
    pass


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


def _int(value, name: str, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise BadRequest(f"{name} must be between {minimum} and {maximum}")
    return value


def clean_behaviour(data: dict) -> tuple[str, dict]:
    """Validate a behaviour request; returns (code, behaviour with defaults filled in)."""
    code = data.get("code", "*")
    if not isinstance(code, str) or not code:
        raise BadRequest("code must be a product code or '*'")
    unknown = set(data) - set(DEFAULT_BEHAVIOUR) - {"code"}
    if unknown:
        raise BadRequest(f"unknown behaviour key(s): {', '.join(sorted(unknown))}")
    behaviour = dict(DEFAULT_BEHAVIOUR)
    behaviour.update({k: v for k, v in data.items() if k != "code"})
    if behaviour["mode"] not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    if behaviour["final"] not in ("success", "failed"):
        raise BadRequest("final must be success or failed")
    if behaviour["answer"] not in ("submitted", "processing"):
        raise BadRequest("answer must be submitted or processing")
    if behaviour["cancel"] not in ("allow", "refuse"):
        raise BadRequest("cancel must be allow or refuse")
    callback = behaviour["callback"]
    behaviour["callback"] = {True: "final", False: "none"}.get(callback, callback) if isinstance(callback, bool) \
        else callback
    if behaviour["callback"] not in ("final", "all", "none"):
        raise BadRequest("callback must be final, all, none, true or false")
    for key in ("latency_ms", "pending_polls", "callback_delay_ms", "duplicate_callbacks", "timeout_ms"):
        behaviour[key] = _int(behaviour[key], key, 0, 600_000)
    behaviour["complete_after_ms"] = _int(behaviour["complete_after_ms"], "complete_after_ms", 0, 600_000,
                                          allow_none=True)
    return code, behaviour


class SupplierSimulator:
    """The WSGI app. State lives in memory, guarded by one lock; nothing slow happens while it is held."""

    def __init__(self, key: str, app_key: str = "kameng-demo", latency_ms: int = 0, balance: int = 100_000_000,
                 products: dict[str, tuple[str, int | None, int]] | None = None):
        if not key:
            raise ValueError("the simulator needs a signing key")
        self.key = key
        self.app_key = app_key
        self.latency_ms = latency_ms
        self.lock = threading.RLock()
        self._initial_balance = balance
        self._initial_products = dict(DEFAULT_PRODUCTS if products is None else products)
        self._timers: set[threading.Timer] = set()
        self.reset()

    # --- state ----------------------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.balance = self._initial_balance
            self.products = {code: {"code": code, "name": name, "stock": stock, "price": price, "available": True}
                             for code, (name, stock, price) in self._initial_products.items()}
            self.behaviours: dict[str, dict] = {"*": dict(DEFAULT_BEHAVIOUR)}
            self.orders: dict[str, dict] = {}
            self.nonces: dict[str, float] = {}
            for timer in list(self._timers):
                timer.cancel()
            self._timers.clear()

    def close(self) -> None:
        """Cancel callbacks not yet sent (tests call it when they stop the server)."""
        with self.lock:
            for timer in list(self._timers):
                timer.cancel()
            self._timers.clear()

    def set_behaviour(self, data: dict) -> dict:
        code, behaviour = clean_behaviour(data)
        with self.lock:
            self.behaviours[code] = behaviour
        return {"code": code, **behaviour}

    def set_stock(self, code: str, stock: int | None, price: int | None = None, name: str | None = None,
                  available: bool | None = None) -> dict:
        with self.lock:
            product = self.products.setdefault(code, {"code": code, "name": name or code, "stock": None,
                                                      "price": 0, "available": True})
            product["stock"] = stock
            if price is not None:
                product["price"] = price
            if name is not None:
                product["name"] = name
            if available is not None:
                product["available"] = bool(available)
            return dict(product)

    def orders_snapshot(self) -> list[dict]:
        with self.lock:
            return [{k: copy.deepcopy(v) for k, v in o.items() if k not in ("behaviour", "polls_left")}
                    for o in self.orders.values()]

    def _behaviour_for(self, code: str) -> dict:
        return dict(self.behaviours.get(code) or self.behaviours["*"])

    # --- WSGI -----------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            if request.path.startswith("/_sim/"):
                response = self._control(request)
            elif request.path.startswith("/api/"):
                response = self._api(request)
            else:
                response = _json({"error": "not found"}, 404)
        except BadRequest as exc:
            response = _json({"error": str(exc)}, 400)
        return response(environ, start_response)

    def _control(self, request: Request) -> Response:
        if request.remote_addr not in ("127.0.0.1", "::1"):
            return _json({"error": "the control API answers only on 127.0.0.1"}, 403)
        data = self._body(request) if request.method == "POST" else {}
        route = (request.method, request.path)
        if route == ("POST", "/_sim/behaviour"):
            return _json(self.set_behaviour(data))
        if route == ("GET", "/_sim/behaviour"):
            with self.lock:
                return _json(self.behaviours)
        if route == ("POST", "/_sim/reset"):
            self.reset()
            return _json({"ok": True})
        if route == ("POST", "/_sim/balance"):
            balance = _int(data.get("balance"), "balance", 0)
            with self.lock:
                self.balance = balance
            return _json({"balance": balance})
        if route == ("POST", "/_sim/stock"):
            code = data.get("code")
            if not isinstance(code, str) or not code:
                raise BadRequest("code is required")
            stock = _int(data.get("stock"), "stock", 0, allow_none=True)
            price = _int(data.get("price"), "price", 0, allow_none=True)
            return _json(self.set_stock(code, stock, price, data.get("name"), data.get("available")))
        if route == ("GET", "/_sim/orders"):
            return _json({"orders": self.orders_snapshot()})
        if route == ("GET", "/_sim/state"):
            with self.lock:
                return _json({"balance": self.balance, "products": list(self.products.values())})
        return _json({"error": "not found"}, 404)

    @staticmethod
    def _body(request: Request) -> dict:
        try:
            data = json.loads(request.get_data() or b"{}")
        except ValueError:
            raise BadRequest("body must be JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("body must be a JSON object")
        return data

    def _api(self, request: Request) -> Response:
        problem = self._authenticate(request)
        if problem:
            return _json({"error": problem}, 401)
        route = (request.method, request.path)
        handlers = {("POST", "/api/recharge"): self._recharge, ("POST", "/api/query"): self._query,
                    ("POST", "/api/cancel"): self._cancel, ("GET", "/api/balance"): self._balance,
                    ("GET", "/api/products"): self._products}
        handler = handlers.get(route)
        if handler is None:
            return _json({"error": "not found"}, 404)
        data = self._body(request) if request.method == "POST" else {}
        response, delay_ms = handler(data)
        total = self.latency_ms + delay_ms
        if total:
            time.sleep(total / 1000)  # never under the lock
        return response

    def _authenticate(self, request: Request) -> str | None:
        headers = request.headers
        app_key, ts = headers.get("X-App-Key", ""), headers.get("X-Timestamp", "")
        nonce, given = headers.get("X-Nonce", ""), headers.get("X-Signature", "")
        if not (app_key and ts and nonce and given):
            return "missing X-App-Key, X-Timestamp, X-Nonce or X-Signature"
        if not hmac.compare_digest(app_key.encode(), self.app_key.encode()):
            return "unknown app key"
        if not ts.isascii() or not ts.isdigit() or len(ts) > 12 or abs(time.time() - int(ts)) > MAX_SKEW_SECONDS:
            return "stale or bad X-Timestamp"
        if not NONCE.fullmatch(nonce):
            return "bad X-Nonce"
        expected = signing.sign(self.key, request.method, request.path, ts, nonce, request.get_data())
        if not signing.signature_matches(expected, given):
            return "bad signature"
        now = time.time()
        with self.lock:
            if len(self.nonces) > 10_000:
                self.nonces = {n: t for n, t in self.nonces.items() if now - t < 2 * MAX_SKEW_SECONDS}
            if nonce in self.nonces and now - self.nonces[nonce] < 2 * MAX_SKEW_SECONDS:
                return "nonce already used"
            self.nonces[nonce] = now
        return None

    # --- the API --------------------------------------------------------------------------------------------

    @staticmethod
    def _answer(order: dict) -> dict:
        return {"order_no": order["order_no"], "status": order["status"], "trade_no": order["trade_no"],
                "message": order["message"]}

    def _recharge(self, data: dict) -> tuple[Response, int]:
        order_no, code, account = data.get("order_no"), data.get("code"), data.get("account")
        notify_url = data.get("notify_url")
        for name, value in (("order_no", order_no), ("code", code), ("account", account)):
            if not isinstance(value, str) or not value.strip() or len(value) > 128:
                raise BadRequest(f"{name} is required (a string of at most 128 characters)")
        quantity = _int(data.get("quantity"), "quantity", 1, 100)
        if notify_url is not None and (not isinstance(notify_url, str) or
                                       urlsplit(notify_url).scheme not in ("http", "https")):
            raise BadRequest("notify_url must be an http(s) URL")
        send = []
        with self.lock:
            existing = self.orders.get(order_no)
            behaviour = existing["behaviour"] if existing else self._behaviour_for(code)
            if self._behaviour_for(code)["mode"] == "error":
                return _json({"error": "上游系统繁忙 (service unavailable)"}, 503), behaviour["latency_ms"]
            if existing is not None:  # idempotent: never credit twice, answer where it stands
                existing["submits"] += 1
                return _json(self._answer(existing)), behaviour["latency_ms"]
            order = {"order_no": order_no, "trade_no": "SIM" + secrets.token_hex(8).upper(), "code": code,
                     "account": account, "quantity": quantity, "amount": 0, "notify_url": notify_url,
                     "status": "submitted", "message": "", "credits": 0, "submits": 1, "queries": 0,
                     "callbacks_sent": 0, "callback_answers": [], "created_at": time.time(),
                     "behaviour": behaviour, "polls_left": behaviour["pending_polls"], "cancels": 0}
            self.orders[order_no] = order
            refusal = self._refusal(order)
            mode = behaviour["mode"]
            if refusal:
                send += self._finish(order, "failed", refusal)
            elif mode == "fail":
                send += self._finish(order, "failed", "上游拒绝 (rejected by the upstream)")
            elif mode == "pending":
                order["status"] = behaviour["answer"]
                order["message"] = "处理中 (processing)"
                if behaviour["callback"] == "all":
                    send += self._callbacks(order)
                if behaviour["complete_after_ms"] is not None:
                    self._later(behaviour["complete_after_ms"] / 1000, self._complete, order_no)
            elif mode == "success":
                send += self._finish(order, "success")
            else:  # timeout, unknown, garbage: the work is done, only the answer goes wrong
                send += self._finish(order, behaviour["final"])
            answer = self._answer(order)
        self._schedule(send)
        if mode == "timeout" and not refusal:
            return _json(answer), behaviour["latency_ms"] + behaviour["timeout_ms"]
        if mode == "unknown" and not refusal:
            return Response("<html><body>500 Internal Server Error: upstream gateway exploded</body></html>",
                            status=500, mimetype="text/html"), behaviour["latency_ms"]
        if mode == "garbage" and not refusal:
            return Response("OK;status=?;" + answer["trade_no"], status=200, mimetype="text/plain"), \
                behaviour["latency_ms"]
        return _json(answer), behaviour["latency_ms"]

    def _refusal(self, order: dict) -> str | None:
        """Why the upstream cannot credit this order at all (None: it can, for now)."""
        product = self.products.get(order["code"])
        if product is None:
            return "产品编码不存在 (unknown product code)"
        if not product["available"]:
            return "产品已下架 (product unavailable)"
        if product["stock"] is not None and product["stock"] < order["quantity"]:
            return "库存不足 (out of stock)"
        if order["code"].startswith(PHONE_PREFIXES) and not MOBILE.fullmatch(order["account"]):
            return "充值号码格式不正确 (not a mobile number)"
        if self.balance < product["price"] * order["quantity"]:
            return "余额不足 (insufficient funds at the upstream)"
        return None

    def _finish(self, order: dict, status: str, message: str | None = None) -> list:
        """Make the order final (under the lock); crediting debits balance and stock once. Returns callbacks."""
        if order["status"] in ("success", "failed"):
            return []
        if status == "success":
            refusal = self._refusal(order)
            if refusal:
                status, message = "failed", refusal
            else:
                product = self.products[order["code"]]
                amount = product["price"] * order["quantity"]
                self.balance -= amount
                if product["stock"] is not None:
                    product["stock"] -= order["quantity"]
                order["amount"] = amount
                order["credits"] += 1
        order["status"] = status
        order["message"] = message or ("充值成功 (credited)" if status == "success" else
                                       "充值失败 (failed at the operator)")
        return self._callbacks(order)

    def _callbacks(self, order: dict) -> list:
        behaviour = order["behaviour"]
        if behaviour["callback"] == "none" or not order["notify_url"]:
            return []
        body = json.dumps(self._answer(order), ensure_ascii=False, separators=(",", ":")).encode()
        delay = behaviour["callback_delay_ms"] / 1000
        return [(delay + i * 0.05, order["order_no"], order["notify_url"], body)
                for i in range(1 + behaviour["duplicate_callbacks"])]

    def _schedule(self, callbacks: list) -> None:
        for delay, order_no, url, body in callbacks:
            self._later(delay, self._send_callback, order_no, url, body)

    def _later(self, delay: float, function, *args) -> None:
        def run():
            with self.lock:
                self._timers.discard(timer)
            function(*args)

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self.lock:
            self._timers.add(timer)
        timer.start()

    def _complete(self, order_no: str) -> None:
        """A pending order finishing by itself (complete_after_ms), unless a query finished it first."""
        with self.lock:
            order = self.orders.get(order_no)
            send = self._finish(order, order["behaviour"]["final"]) if order else []
        self._schedule(send)

    def _send_callback(self, order_no: str, url: str, body: bytes) -> None:
        headers = signing.signed_headers(self.app_key, self.key, "POST", urlsplit(url).path or "/", body)
        headers["Content-Type"] = "application/json"
        try:
            response = requests.post(url, data=body, headers=headers, timeout=CALLBACK_TIMEOUT_SECONDS,
                                     allow_redirects=False)
            answer = f"{response.status_code} {response.text[:64]}"
        except requests.RequestException as exc:
            answer = f"error {type(exc).__name__}"
        with self.lock:
            order = self.orders.get(order_no)
            if order is not None:
                order["callbacks_sent"] += 1
                order["callback_answers"].append(answer)

    def _query(self, data: dict) -> tuple[Response, int]:
        order_no = data.get("order_no")
        if not isinstance(order_no, str) or not order_no:
            raise BadRequest("order_no is required")
        send = []
        with self.lock:
            order = self.orders.get(order_no)
            if order is None:
                return _json({"order_no": order_no, "status": "not_found", "trade_no": None,
                              "message": "订单不存在 (no such order)"}), 0
            order["queries"] += 1
            behaviour = order["behaviour"]
            if order["status"] in ("submitted", "processing"):
                if order["polls_left"] > 0:
                    order["polls_left"] -= 1
                    order["status"] = "processing"
                else:
                    send += self._finish(order, behaviour["final"])
            answer = self._answer(order)
        self._schedule(send)
        return _json(answer), behaviour["latency_ms"]

    def _cancel(self, data: dict) -> tuple[Response, int]:
        order_no = data.get("order_no")
        if not isinstance(order_no, str) or not order_no.strip() or len(order_no) > 128:
            raise BadRequest("order_no is required (a string of at most 128 characters)")
        send = []
        with self.lock:
            order = self.orders.get(order_no)
            if order is None:  # never received: barred, so a submit still in flight can never credit it
                behaviour = self._behaviour_for("*")
                order = {"order_no": order_no, "trade_no": "SIM" + secrets.token_hex(8).upper(), "code": None,
                         "account": None, "quantity": 0, "amount": 0, "notify_url": None, "status": "failed",
                         "message": "已撤单：未收到此单 (withdrawn before it was received)", "credits": 0,
                         "submits": 0, "queries": 0, "callbacks_sent": 0, "callback_answers": [],
                         "created_at": time.time(), "behaviour": behaviour, "polls_left": 0, "cancels": 1}
                self.orders[order_no] = order
            else:
                order["cancels"] += 1
                behaviour = order["behaviour"]
                if order["status"] in ("submitted", "processing"):
                    if behaviour["cancel"] == "allow":
                        send += self._finish(order, "failed", "已撤单 (withdrawn at the caller's request)")
                    else:
                        order["message"] = "运营商处理中，无法撤单 (already at the operator: cannot be withdrawn)"
            answer = self._answer(order)
        self._schedule(send)
        return _json(answer), behaviour["latency_ms"]

    def _balance(self, data: dict) -> tuple[Response, int]:
        with self.lock:
            return _json({"balance": self.balance}), 0

    def _products(self, data: dict) -> tuple[Response, int]:
        with self.lock:
            return _json({"products": [dict(p) for p in self.products.values()]}), 0

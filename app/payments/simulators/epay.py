"""A local 易支付 (epay V1, MD5) provider for the demo and the tests: plain WSGI, thread-safe.

It stands in for a provider's site: the channel's `gateway` setting points at {url}/. The protocol and its sources
are in app/payments/channels/epay.py; the control API shared by every simulator is in
app/payments/simulators/__init__.py.

- `submit.php` (GET or POST; the buyer's browser): checks pid (registered), sign_type MD5, the MD5 signature over
  every non-empty parameter but sign and sign_type, out_trade_no (1-64 letters, digits, _ or -), notify_url and
  name present, money `^\\d+(\\.\\d{1,2})?$` yuan in 0.01..100000000, type blank or alipay / wxpay / qqpay. It
  records the order (status 0, a 19-digit trade_no) and shows a cashier page whose 付款 button pays it (the same
  code as /_sim/pay), then redirects to return_url with the signed notification fields (GET). Opening it again
  shows the same order; another money or name for a known out_trade_no is refused (订单信息不一致), a paid one
  answers 订单已支付. Errors are small HTML pages with HTTP 400 (easy to test).
- `mapi.php` (POST): the same checks plus clientip; answers {"code": 1, "msg", "trade_no", "payurl"} (its
  /pay/<trade_no>/ cashier page; or "qrcode" with behaviour mapi_answer=qrcode) and {"code": -1, "msg"} on a
  refusal.
- `api.php?act=order` (pid, key, out_trade_no or trade_no; GET or POST): {"code": 1, "msg", "trade_no",
  "out_trade_no", "type", "pid", "addtime", "endtime", "name", "money", "status" 0/1/2}; a wrong key answers
  {"code": -1, "msg": "KEY校验失败"}, an unknown order {"code": -1, "msg": "订单号不存在"}.
- `api.php?act=refund` (POST: pid, key, out_trade_no or trade_no, money): refunds a paid order once (status 2,
  only the full amount: partial refunds are unconfirmed); a second call answers {"code": -1, "msg": "该订单已退款"}
  and moves nothing. Behaviour refund: "success", "fail" (code -1, nothing refunded), "timeout" (refunded, answered
  after refund_timeout_ms), "unsupported" (code -1 "商户未开通退款接口", like providers without the call).
- Notifications: GET (behaviour notify_method "GET"; "POST" sends a form) to notify_url with pid, trade_no,
  out_trade_no, type, name, money, trade_status=TRADE_SUCCESS, sign, sign_type=MD5; resent after NOTIFY_DELAYS
  until the answer is HTTP 200 with the body `success` (the real schedule is unconfirmed). Behaviour
  "notify_tamper": null | "amount" (money raised by 0.01 after signing: the signature breaks) | "pid" (signed
  correctly, for another merchant) | "money" (signed correctly with a wrong amount, as a misconfigured or hostile
  provider could) | "sign" (signed with another key).

Control API: the common one (bill/plant answers 400: V1 has no bill), plus `GET /_sim/keys` {"pid", "key"} and
`POST /_sim/merchant` {"pid"?, "key"?} (sets them; a new registration replaces the old one). /_sim/orders entries
carry "status" (epay's 0/1/2), "notify_status" ("sending", "answered", "unanswered", "dropped", "none").

`merchant_settings(url)` reads the simulator's pid and key and returns the epay channel settings pointing at it.
"""
from __future__ import annotations

import html
import json
import re
import secrets
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlencode, urlsplit

from werkzeug.wrappers import Request, Response

from app import outbound
from app.payments.channels.epay import sign, yuan
from app.payments.simulators.behaviour import behaviour_update

AMOUNT_RE = re.compile(r"^\d+(\.\d{1,2})?$")
ORDER_NO_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_AMOUNT = 100_000_000_00
NOTIFY_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 2.0)
CHINA = timezone(timedelta(hours=8))
DEFAULT_BEHAVIOUR = {"notify": "send", "notify_duplicates": 0, "notify_method": "GET", "notify_tamper": None,
                     "refund": "success", "refund_timeout_ms": 3000, "mapi_answer": "payurl"}
CHOICES = {"notify": ("send", "drop"), "notify_method": ("GET", "POST"),
           "notify_tamper": (None, "amount", "pid", "money", "sign"),
           "refund": ("success", "fail", "timeout", "unsupported"), "mapi_answer": ("payurl", "qrcode")}


def parse_amount(text) -> int | None:
    if not isinstance(text, str) or not AMOUNT_RE.match(text):
        return None
    whole, _, frac = text.partition(".")
    fen = int(whole) * 100 + int(frac.ljust(2, "0") or 0)
    return fen if 1 <= fen <= MAX_AMOUNT else None


def now_text() -> str:
    return datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


def _page(title: str, body: str, status: int = 200) -> Response:
    text = (f"<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"</head><body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">{body}</body></html>")
    return Response(text, status=status, content_type="text/html; charset=utf-8")


class Refused(Exception):
    pass


class EpaySimulator:
    def __init__(self):
        self.lock = threading.RLock()
        self.pid = str(1000 + secrets.randbelow(9000))
        self.key = secrets.token_hex(16)
        self.notify_delays = NOTIFY_DELAYS
        self._reset()

    def _reset(self) -> None:
        with self.lock:
            self.orders: dict[str, dict] = {}
            self.refunds: list[dict] = []
            self.behaviour = dict(DEFAULT_BEHAVIOUR)
            self.generation = uuid.uuid4().hex

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.route(request)
        except Exception as exc:  # pragma: no cover - a bug in the simulator: say so
            response = _json({"error": f"simulator error: {type(exc).__name__}: {exc}"}, 500)
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        path = request.path
        params = {**request.args.to_dict(), **request.form.to_dict()}
        if path == "/submit.php":
            return self.submit(request, params)
        if path == "/mapi.php" and request.method == "POST":
            return self.mapi(request, params)
        if path == "/api.php":
            act = request.args.get("act") or params.get("act")
            if act == "order":
                return self.query(params)
            if act == "refund" and request.method == "POST":
                return self.refund(params)
            return _json({"code": -1, "msg": "不支持的操作"})
        if path.startswith("/pay/") and request.method == "GET":
            return self.pay_page(request, path.removeprefix("/pay/").strip("/"))
        if path.startswith("/_sim/cashier/") and request.method == "POST":
            return self.cashier_pay(path.removeprefix("/_sim/cashier/"))
        if path.startswith("/_sim/pay/") and request.method == "POST":
            payload = request.get_json(silent=True) or {}
            status, data = self.pay(path.removeprefix("/_sim/pay/"), payload.get("notify"), payload.get("duplicates"))
            return _json(data, status)
        if path == "/_sim/keys" and request.method == "GET":
            with self.lock:
                return _json({"pid": self.pid, "key": self.key})
        if path == "/_sim/merchant" and request.method == "POST":
            payload = request.get_json(silent=True) or {}
            with self.lock:
                if payload.get("pid"):
                    self.pid = str(payload["pid"])
                if payload.get("key"):
                    self.key = str(payload["key"])
                return _json({"pid": self.pid})
        if path == "/_sim/orders" and request.method == "GET":
            return _json(self.order_list())
        if path == "/_sim/refunds" and request.method == "GET":
            with self.lock:
                return _json([dict(r) for r in self.refunds])
        if path == "/_sim/behaviour":
            if request.method == "POST":
                return self.set_behaviour(request.get_json(silent=True) or {})
            with self.lock:
                return _json(dict(self.behaviour))
        if path == "/_sim/bill/plant":
            return _json({"error": "epay V1 has no bill download"}, 400)
        if path == "/_sim/reset" and request.method == "POST":
            self._reset()
            return _json({"reset": True})
        return _json({"error": "not found"}, 404)

    # --- control ---------------------------------------------------------------------------------------------

    def set_behaviour(self, payload: dict) -> Response:
        update, problem = behaviour_update(payload, DEFAULT_BEHAVIOUR, CHOICES)
        if problem:
            return _json({"error": problem}, 400)
        with self.lock:
            self.behaviour.update(update)
            return _json(dict(self.behaviour))

    def order_list(self) -> list[dict]:
        with self.lock:
            return [{"out_trade_no": o["out_trade_no"], "trade_no": o["trade_no"], "amount": o["amount"],
                     "state": {0: "waiting", 1: "paid", 2: "refunded"}[o["status"]], "status": o["status"],
                     "notify_url": o["notify_url"], "notifications_sent": o["notifications_sent"],
                     "notify_status": o["notify_status"], "queries": o["queries"], "closes": 0}
                    for o in self.orders.values()]

    # --- creating orders -------------------------------------------------------------------------------------

    def _check(self, params: dict, server: bool) -> dict:
        """The order a signed submit.php / mapi.php request describes; Refused with the provider's message."""
        with self.lock:
            pid, key = self.pid, self.key
        if str(params.get("pid", "")) != pid:
            raise Refused("商户不存在")
        if params.get("sign_type", "MD5") != "MD5" or not params.get("sign"):
            raise Refused("签名类型不支持")
        if not secrets.compare_digest(sign(params, key), str(params["sign"]).lower()):
            raise Refused("签名校验失败")
        out_trade_no = str(params.get("out_trade_no") or "")
        if not ORDER_NO_RE.match(out_trade_no):
            raise Refused("订单号(out_trade_no)格式错误")
        if not params.get("notify_url") or not params.get("name"):
            raise Refused("notify_url 与 name 不能为空")
        amount = parse_amount(params.get("money"))
        if amount is None:
            raise Refused("金额(money)格式错误")
        if params.get("type", "") not in ("", "alipay", "wxpay", "qqpay"):
            raise Refused("支付方式(type)不支持")
        if server and not params.get("clientip"):
            raise Refused("clientip 不能为空")
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                order = {"out_trade_no": out_trade_no, "amount": amount, "name": params["name"],
                         "type": params.get("type") or "alipay",
                         "trade_no": datetime.now(CHINA).strftime("%Y%m%d%H%M%S") + f"{secrets.randbelow(10**5):05d}",
                         "notify_url": params["notify_url"], "return_url": params.get("return_url", ""),
                         "status": 0, "addtime": now_text(), "endtime": "", "notifications_sent": 0,
                         "notify_status": "none", "queries": 0}
                self.orders[out_trade_no] = order
            elif order["amount"] != amount or order["name"] != params["name"]:
                raise Refused("订单信息不一致")
            if order["status"] != 0:
                raise Refused("订单已支付")
            return order

    def submit(self, request: Request, params: dict) -> Response:
        try:
            order = self._check(params, server=False)
        except Refused as exc:
            return _page("易支付 - 错误", f"<h1>错误</h1><p>{html.escape(str(exc))}</p>", 400)
        return self._cashier(request, order)

    def pay_page(self, request: Request, trade_no: str) -> Response:
        """The payurl mapi.php answered: the same cashier, for an order created server side."""
        order = self._find({"trade_no": trade_no})
        if order is None or order["status"] != 0:
            return _page("易支付 - 错误", "<h1>错误</h1><p>订单不存在或已支付</p>", 400)
        return self._cashier(request, order)

    def _cashier(self, request: Request, order: dict) -> Response:
        action = html.escape(f"{request.script_root}/_sim/cashier/{quote(order['out_trade_no'], safe='')}")
        return _page("易支付 - 收银台", (
            f"<h1>易支付收银台 (模拟)</h1><p>{html.escape(order['name'])}</p>"
            f"<p>订单号 {html.escape(order['out_trade_no'])}<br>交易号 {order['trade_no']}</p>"
            f"<p style=\"font-size:2em\">¥{yuan(order['amount'])}</p>"
            f"<form method=\"post\" action=\"{action}\"><button type=\"submit\" id=\"epay-pay\">付款</button></form>"))

    def mapi(self, request: Request, params: dict) -> Response:
        try:
            order = self._check(params, server=True)
        except Refused as exc:
            return _json({"code": -1, "msg": str(exc)})
        base = request.host_url.rstrip("/")
        with self.lock:
            answer = self.behaviour["mapi_answer"]
        data = {"code": 1, "msg": "成功", "trade_no": order["trade_no"]}
        if answer == "qrcode":
            data["qrcode"] = f"{base}/_sim/qr/{order['trade_no']}"
        else:
            data["payurl"] = f"{base}/pay/{order['trade_no']}/"
        return _json(data)

    # --- paying ----------------------------------------------------------------------------------------------

    def cashier_pay(self, out_trade_no: str) -> Response:
        status, data = self.pay(out_trade_no, None, None)
        if status != 200:
            return _page("易支付 - 无法付款", f"<h1>无法付款</h1><p>{html.escape(data.get('error', ''))}</p>", status)
        with self.lock:
            order = self.orders[out_trade_no]
            return_url, fields = order["return_url"], self._fields(order, tamper=False)
        if not return_url:
            return _page("易支付 - 付款成功", "<h1>付款成功</h1>")
        separator = "&" if urlsplit(return_url).query else "?"
        return Response(status=302, headers={"Location": f"{return_url}{separator}{urlencode(fields)}"})

    def pay(self, out_trade_no: str, notify: str | None, duplicates) -> tuple[int, dict]:
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                return 404, {"error": f"no order {out_trade_no!r} (the buyer never opened its pay page)"}
            if order["status"] != 0:
                return 409, {"error": "order already paid", "out_trade_no": out_trade_no}
            order["status"], order["endtime"] = 1, now_text()
            mode = notify if notify in ("send", "drop") else self.behaviour["notify"]
            copies = duplicates if isinstance(duplicates, int) and duplicates >= 0 else \
                self.behaviour["notify_duplicates"]
            if mode == "drop":
                order["notify_status"] = "dropped"
            else:
                order["notify_status"] = "sending"
                fields = self._fields(order, tamper=True)
                threading.Thread(target=self._deliver, daemon=True,
                                 args=(self.generation, out_trade_no, order["notify_url"], fields, copies,
                                       self.behaviour["notify_method"])).start()
            return 200, {"out_trade_no": out_trade_no, "trade_no": order["trade_no"], "amount": order["amount"],
                         "notify_status": order["notify_status"]}

    def _fields(self, order: dict, tamper: bool) -> dict:
        mode = self.behaviour["notify_tamper"] if tamper else None
        amount = order["amount"] + 1 if mode == "money" else order["amount"]
        fields = {"pid": str(int(self.pid) + 1) if mode == "pid" else self.pid, "trade_no": order["trade_no"],
                  "out_trade_no": order["out_trade_no"], "type": order["type"], "name": order["name"],
                  "money": yuan(amount), "trade_status": "TRADE_SUCCESS"}
        fields["sign"] = sign(fields, secrets.token_hex(16) if mode == "sign" else self.key)
        fields["sign_type"] = "MD5"
        if mode == "amount":
            fields["money"] = yuan(order["amount"] + 1)
        return fields

    def _deliver(self, generation: str, out_trade_no: str, url: str, fields: dict, copies: int, method: str) -> None:
        answered = False
        for delay in self.notify_delays:
            time.sleep(delay)
            answered = self._notify(generation, out_trade_no, url, fields, method)
            if answered is None:
                return
            if answered:
                break
        with self.lock:
            order = self.orders.get(out_trade_no)
            if self.generation != generation or order is None:
                return
            order["notify_status"] = "answered" if answered else "unanswered"
        for _ in range(copies):
            if self._notify(generation, out_trade_no, url, fields, method) is None:
                return

    def _notify(self, generation: str, out_trade_no: str, url: str, fields: dict, method: str) -> bool | None:
        """True when answered `success`; None when the simulator was reset meanwhile."""
        with self.lock:
            order = self.orders.get(out_trade_no)
            if self.generation != generation or order is None:
                return None
            order["notifications_sent"] += 1
        try:
            with outbound.session(allow_private=True) as session:  # a demo server calling its neighbours
                if method == "POST":
                    response = session.post(url, data=fields, timeout=5, allow_redirects=False)
                else:
                    response = session.get(url, params=fields, timeout=5, allow_redirects=False)
            return response.status_code == 200 and response.content.strip() == b"success"
        except Exception:  # noqa: BLE001 - any failure to deliver is "not answered"
            return False

    # --- api.php ---------------------------------------------------------------------------------------------

    def _find(self, params: dict) -> dict | None:
        with self.lock:
            if params.get("trade_no"):
                return next((o for o in self.orders.values() if o["trade_no"] == params["trade_no"]), None)
            return self.orders.get(str(params.get("out_trade_no") or ""))

    def _authorised(self, params: dict) -> bool:
        with self.lock:
            return str(params.get("pid", "")) == self.pid and secrets.compare_digest(
                str(params.get("key", "")).encode(), self.key.encode())

    def query(self, params: dict) -> Response:
        if not self._authorised(params):
            return _json({"code": -1, "msg": "KEY校验失败"})
        order = self._find(params)
        if order is None:
            return _json({"code": -1, "msg": "订单号不存在"})
        with self.lock:
            order["queries"] += 1
            return _json({"code": 1, "msg": "查询订单号成功！", "trade_no": order["trade_no"],
                          "out_trade_no": order["out_trade_no"], "type": order["type"], "pid": int(self.pid),
                          "addtime": order["addtime"], "endtime": order["endtime"], "name": order["name"],
                          "money": yuan(order["amount"]), "status": order["status"], "param": "", "buyer": ""})

    def refund(self, params: dict) -> Response:
        if not self._authorised(params):
            return _json({"code": -1, "msg": "KEY校验失败"})
        with self.lock:
            mode, delay = self.behaviour["refund"], self.behaviour["refund_timeout_ms"] / 1000
        if mode == "unsupported":
            return _json({"code": -1, "msg": "商户未开通退款接口"})
        order = self._find(params)
        if order is None:
            return _json({"code": -1, "msg": "订单号不存在"})
        amount = parse_amount(params.get("money"))
        with self.lock:
            record = {"out_trade_no": order["out_trade_no"], "out_refund_no": "", "trade_no": order["trade_no"],
                      "amount": amount or 0, "requests": 1, "status": "failed"}
            self.refunds.append(record)
            if order["status"] == 2:
                return _json({"code": -1, "msg": "该订单已退款"})
            if order["status"] != 1:
                return _json({"code": -1, "msg": "订单未支付"})
            if amount != order["amount"]:
                return _json({"code": -1, "msg": "退款金额不正确"})
            if mode == "fail":
                return _json({"code": -1, "msg": "退款失败，余额不足"})
            order["status"], record["status"] = 2, "succeeded"
        if mode == "timeout":
            time.sleep(delay)
        return _json({"code": 1, "msg": "退款成功"})


def merchant_settings(url: str) -> dict:
    """The simulator's pid and key at `url`; the epay channel settings pointing at it (refunds through its API)."""
    with outbound.session(allow_private=True) as session:  # a demo server calling its neighbours
        keys = session.get(f"{url}/_sim/keys", timeout=10)
        keys.raise_for_status()
    data = keys.json()
    return {"pid": data["pid"], "key": data["key"], "gateway": f"{url}/", "pay_type": "alipay", "mode": "submit",
            "refund_api": "yes", "sitename": "卡盟商城"}

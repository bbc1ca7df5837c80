"""A local Alipay OpenAPI gateway (RSA2) for the demo and the tests: plain WSGI, thread-safe.

It stands in for https://openapi.alipay.com: the channel's `gateway` setting points at {url}/gateway.do.
The protocol and its sources are in app/payments/channels/alipay.py; the control API shared by every simulator is
in app/payments/simulators/__init__.py.

Gateway (`/gateway.do`, GET or POST; parameters from the query string and the UTF-8 form body together):
- Checks, in the gateway's order, answering `{"<method>_response": {code, msg, sub_code, sub_msg}, "sign"}`
  (`error_response` when the method is missing or unknown): 40001 isv.missing-method / -app-id / -signature /
  -signature-type / -timestamp / -version; 40002 isv.invalid-app-id (answered UNSIGNED: the app is unknown),
  isv.invalid-charset (utf-8 only), isv.invalid-signature-type (RSA2 only), isv.invalid-timestamp (format
  "yyyy-MM-dd HH:mm:ss"; API calls also within 30 minutes of China time: the window is our assumption),
  isv.invalid-format (JSON only), isv.invalid-version (1.0), isv.invalid-signature (SHA256withRSA with the
  registered app public key over every non-empty parameter but `sign`, sorted, k=v&), isv.invalid-method.
  Bad business parameters (biz_content not JSON, amounts not `^\\d+(\\.\\d{1,2})?$` yuan in 0.01..100000000,
  missing out_trade_no, ...) answer 40004 ACQ.INVALID_PARAMETER. Every answer but the unknown-app one is signed
  with the simulator's Alipay key over the node's exact text.
- alipay.trade.page.pay: the buyer's browser (GET, or the SDK's auto-submitted POST form). It records the trade
  (WAIT_BUYER_PAY, a 28-digit trade_no) and shows a small cashier page whose 付款 button pays it (the same code
  as /_sim/pay) and then redirects to return_url with the signed synchronous return parameters
  (method=alipay.trade.page.pay.return). Opening it again shows the same trade; a different amount or subject
  for a known out_trade_no is ACQ.CONTEXT_INCONSISTENT, a paid one ACQ.TRADE_HAS_SUCCESS, a closed or expired
  one ACQ.TRADE_HAS_CLOSE (error pages answer HTTP 400 here, to be easy to test). time_expire is the absolute
  deadline: after it the trade is closed (no notification is sent for the close).
- alipay.trade.query / alipay.trade.close / alipay.trade.refund / alipay.trade.fastpay.refund.query /
  alipay.data.dataservice.bill.downloadurl.query as the adapter's docstring describes; an unopened page pay is
  ACQ.TRADE_NOT_EXIST; close of a trade not waiting for payment is ACQ.TRADE_STATUS_ERROR; refunds need a
  TRADE_SUCCESS trade (ACQ.TRADE_STATUS_ERROR unpaid, ACQ.TRADE_HAS_CLOSE closed), are idempotent per
  (trade, out_request_no) (a repeat answers fund_change=N and moves no money), and their sum never exceeds the
  total (ACQ.REFUND_AMT_NOT_EQUAL_TOTAL). A full refund closes the trade (TRADE_CLOSED, still with
  send_pay_date). The refund query answers refund_status=REFUND_SUCCESS with refund_amount for a refund done,
  and nothing about the refund (only out_trade_no, trade_no) otherwise.
- Bills: every paid trade (on its China payment day) and every successful refund (on its China refund day), with
  plants applied; a day (yyyy-MM-dd) or month (yyyy-MM) without lines is isp.bill_not_exist. The URL answered
  is this server's /downloadBillFile.resource?...&fileId=T, valid `bill_url_ttl` seconds (30) after issue,
  then 404. The zip holds {seller_id}_{yyyyMMdd}_业务明细.csv and ..._业务明细(汇总).csv, names in GBK without
  the UTF-8 flag, contents GBK: "#" header lines, the 25 columns, trade and order numbers ending in a tab,
  refunds as 业务类型 退款 with negative amounts and 退款批次号/请求号 = out_request_no. The summary file's
  columns are not confirmed anywhere.

Notifications (payments only): form POST to the trade's notify_url with notify_time, notify_type=
trade_status_sync, notify_id, app_id, auth_app_id, charset, version, sign_type=RSA2, sign, trade_no,
out_trade_no, buyer_id, buyer_logon_id, seller_id, trade_status=TRADE_SUCCESS, total_amount, receipt_amount,
invoice_amount, buyer_pay_amount, point_amount, subject, gmt_create, gmt_payment, fund_bill_list; signed over
every non-empty field but sign and sign_type. Resent after NOTIFY_DELAYS (0, 0.2, 0.5, 1, 2, 2 s: 6 tries; the
real gateway waits 4m, 10m, 10m, 1h, 2h, 6h, 15h) until the answer is HTTP 200 with the body exactly `success`.
Retries and duplicate copies carry the same notify_id and fields.

Behaviour (POST /_sim/behaviour), besides the common keys:
- refund "success": paid out at once (fund_change=Y). "processing": accepted, not paid out (fund_change=N); the
  refund query shows nothing `refund_processing_queries` times, then REFUND_SUCCESS (paid out then).
  "timeout": paid out at once, answered after refund_timeout_ms. "fail": 40004 ACQ.REASON_TRADE_BEEN_FREEZEN,
  nothing refunded. "abnormal": Alipay has no ABNORMAL refund; the closest "staff must act" answer is 40004
  ACQ.SELLER_BALANCE_NOT_ENOUGH, nothing refunded (a later request with the same out_request_no is tried anew).
- "notify_tamper": null | "amount" (total_amount raised by 0.01 after signing: the signature breaks) |
  "app_id" (signed correctly, for another app_id).
- "reply_sign": "ok" | "none" (API answers unsigned) | "bad" (signed with another key).

Control API: the common one, plus POST /_sim/merchant {"app_id", "public_key"} (registers the merchant app; a
new registration replaces the previous one) -> {"app_id"}, and GET /_sim/keys -> {"app_id", "alipay_public_key",
"seller_id"}. /_sim/orders entries also carry "trade_status" (Alipay's), "refunded" (fen), "notify_status"
("sending", "answered", "unanswered", "dropped", "none"), "time_expire"; "state" is waiting/paid/closed/refunded.
/_sim/refunds "status" is succeeded/processing/failed/abnormal.

`merchant_settings(url)` generates the app's RSA 2048 key pair, registers it and returns the channel settings.
"""
from __future__ import annotations

import csv
import html
import io
import json
import re
import secrets
import threading
import time
import uuid
import zipfile
from datetime import date, datetime, timedelta
from urllib.parse import quote, urlencode, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from werkzeug.wrappers import Request, Response

from app import outbound
from app.payments.channels import rsa
from app.payments.channels.alipay import CHINA, TIME_FORMAT, content_to_sign, yuan
from app.payments.simulators.behaviour import behaviour_update

AMOUNT_RE = re.compile(r"^\d+(\.\d{1,2})?$")
MAX_AMOUNT = 100_000_000_00  # fen: 100000000.00 yuan
NOTIFY_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 2.0)
TIMESTAMP_WINDOW = timedelta(minutes=30)
API_METHODS = ("alipay.trade.query", "alipay.trade.close", "alipay.trade.refund",
               "alipay.trade.fastpay.refund.query", "alipay.data.dataservice.bill.downloadurl.query")
PAGE_PAY = "alipay.trade.page.pay"
BILL_HEADER = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"
               "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,"
               "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注").split(",")
SUMMARY_HEADER = ("门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,"
                  "商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）").split(",")
DEFAULT_BEHAVIOUR = {"notify": "send", "notify_duplicates": 0, "refund": "success", "refund_timeout_ms": 3000,
                     "refund_processing_queries": 2, "notify_tamper": None, "reply_sign": "ok"}
CHOICES = {"notify": ("send", "drop"), "refund": ("success", "processing", "timeout", "fail", "abnormal"),
           "notify_tamper": (None, "amount", "app_id"), "reply_sign": ("ok", "none", "bad")}
STATES = {"WAIT_BUYER_PAY": "waiting", "TRADE_SUCCESS": "paid", "TRADE_FINISHED": "paid"}
GATEWAY_MESSAGES = {"40001": "Missing Required Arguments", "40002": "Invalid Arguments", "40004": "Business Failed",
                    "20000": "Service Currently Unavailable"}


def generate_keypair() -> tuple[str, str]:
    """(private PKCS#8 PEM, public SubjectPublicKeyInfo PEM), RSA 2048."""
    key = rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def parse_amount(text) -> int | None:
    """Alipay's yuan amount (at most two decimals, 0.01..100000000) -> fen; None when malformed."""
    if not isinstance(text, str) or not AMOUNT_RE.match(text):
        return None
    whole, _, frac = text.partition(".")
    fen = int(whole) * 100 + int(frac.ljust(2, "0") or 0)
    return fen if 1 <= fen <= MAX_AMOUNT else None


def now_china() -> datetime:
    return datetime.now(CHINA)


def fmt(at: datetime | None) -> str:
    return at.strftime(TIME_FORMAT) if at else ""


class _GbkName(zipfile.ZipInfo):
    """A zip entry whose name is stored in GBK without the UTF-8 flag, as Alipay's bill zips are."""

    def _encodeFilenameFlags(self):  # noqa: N802 (zipfile's own name)
        return self.filename.encode("gbk"), self.flag_bits & ~0x800


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


def _page(title: str, body: str, status: int = 200) -> Response:
    text = (f"<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"</head><body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">{body}</body></html>")
    return Response(text, status=status, content_type="text/html; charset=utf-8")


class GatewayError(Exception):
    def __init__(self, code: str, sub_code: str, sub_msg: str, signed: bool = True):
        super().__init__(sub_code)
        self.code, self.sub_code, self.sub_msg, self.signed = code, sub_code, sub_msg, signed


class AlipaySimulator:
    def __init__(self):
        self.lock = threading.RLock()
        self.private_key, self.public_key = generate_keypair()
        self.app_id = "2021" + "".join(secrets.choice("0123456789") for _ in range(12))
        self.app_public_key: str | None = None
        self.seller_id = "2088" + "".join(secrets.choice("0123456789") for _ in range(12))
        self.bill_url_ttl = 30.0
        self.notify_delays = NOTIFY_DELAYS
        self._stranger_key: str | None = None  # signs the "bad" replies
        self._reset()

    def _reset(self) -> None:
        with self.lock:
            self.orders: dict[str, dict] = {}
            self.refunds: dict[tuple[str, str], dict] = {}
            self.plants: dict[str, int] = {}
            self.bills: dict[str, tuple[bytes, float, str]] = {}
            self.ghosts: dict[str, str] = {}  # planted orders never seen -> their made-up trade_no
            self.behaviour = dict(DEFAULT_BEHAVIOUR)
            self.generation = uuid.uuid4().hex  # notifications of a forgotten generation stop

    # --- WSGI ------------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.route(request)
        except Exception as exc:  # pragma: no cover - a bug in the simulator: say so
            response = _json({"error": f"simulator error: {type(exc).__name__}: {exc}"}, 500)
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        path = request.path
        if path == "/gateway.do":
            return self.gateway(request)
        if path == "/downloadBillFile.resource" and request.method == "GET":
            return self.download_bill(request.args.get("fileId", ""))
        if path.startswith("/_sim/cashier/") and request.method == "POST":
            return self.cashier_pay(path.removeprefix("/_sim/cashier/"))
        if path.startswith("/_sim/pay/") and request.method == "POST":
            payload = request.get_json(silent=True) or {}
            status, data = self.pay(path.removeprefix("/_sim/pay/"), payload.get("notify"),
                                    payload.get("duplicates"))
            return _json(data, status)
        if path == "/_sim/merchant" and request.method == "POST":
            return self.register(request.get_json(silent=True) or {})
        if path == "/_sim/keys" and request.method == "GET":
            return _json({"app_id": self.app_id, "alipay_public_key": self.public_key, "seller_id": self.seller_id})
        if path == "/_sim/orders" and request.method == "GET":
            return _json(self.order_list())
        if path == "/_sim/refunds" and request.method == "GET":
            return _json(self.refund_list())
        if path == "/_sim/behaviour":
            if request.method == "POST":
                return self.set_behaviour(request.get_json(silent=True) or {})
            with self.lock:
                return _json(dict(self.behaviour))
        if path == "/_sim/bill/plant" and request.method == "POST":
            payload = request.get_json(silent=True) or {}
            amount = payload.get("amount")
            if not payload.get("out_trade_no") or not isinstance(amount, int) or isinstance(amount, bool):
                return _json({"error": "out_trade_no and amount (fen, integer) are required"}, 400)
            with self.lock:
                self.plants[str(payload["out_trade_no"])] = amount
            return _json({"out_trade_no": payload["out_trade_no"], "amount": amount})
        if path == "/_sim/reset" and request.method == "POST":
            self._reset()
            return _json({"reset": True})
        return _json({"error": "not found"}, 404)

    # --- control ---------------------------------------------------------------------------------------------

    def register(self, payload: dict) -> Response:
        public_key = payload.get("public_key")
        try:
            serialization.load_pem_public_key(str(public_key).encode())
        except (ValueError, TypeError):
            return _json({"error": "public_key must be a PEM public key"}, 400)
        with self.lock:
            if payload.get("app_id"):
                self.app_id = str(payload["app_id"])
            self.app_public_key = str(public_key)
            return _json({"app_id": self.app_id})

    def set_behaviour(self, payload: dict) -> Response:
        update, problem = behaviour_update(payload, DEFAULT_BEHAVIOUR, CHOICES)
        if problem:
            return _json({"error": problem}, 400)
        with self.lock:
            self.behaviour.update(update)
            return _json(dict(self.behaviour))

    def order_list(self) -> list[dict]:
        with self.lock:
            for order in self.orders.values():
                self._expire(order)
            return [{"out_trade_no": o["out_trade_no"], "trade_no": o["trade_no"], "amount": o["amount"],
                     "state": self._state(o), "trade_status": o["trade_status"], "notify_url": o["notify_url"],
                     "notifications_sent": o["notifications_sent"], "notify_status": o["notify_status"],
                     "queries": o["queries"], "closes": o["closes"], "refunded": o["refunded"],
                     "time_expire": fmt(o["time_expire"])} for o in self.orders.values()]

    def refund_list(self) -> list[dict]:
        with self.lock:
            return [{"out_trade_no": r["out_trade_no"], "out_refund_no": r["out_request_no"], "amount": r["amount"],
                     "status": r["status"], "requests": r["requests"], "trade_no": r["trade_no"],
                     "queries": r["queries"]} for r in self.refunds.values()]

    @staticmethod
    def _state(order: dict) -> str:
        if order["trade_status"] == "TRADE_CLOSED":
            return "refunded" if order["paid_at"] else "closed"
        return STATES[order["trade_status"]]

    def _expire(self, order: dict) -> None:
        if order["trade_status"] == "WAIT_BUYER_PAY" and order["time_expire"] and now_china() >= order["time_expire"]:
            order["trade_status"] = "TRADE_CLOSED"

    # --- the gateway -----------------------------------------------------------------------------------------

    def gateway(self, request: Request) -> Response:
        params = {**request.args.to_dict(), **request.form.to_dict()}
        method = params.get("method", "")
        page = method == PAGE_PAY
        try:
            self.check_common(params, page)
            if page:
                return self.page_pay(request, params)
            if method not in API_METHODS:
                raise GatewayError("40002", "isv.invalid-method", "不存在的方法名")
            biz = self.biz(params)
            if method == "alipay.trade.refund":
                return self.trade_refund(biz)  # replies itself: the timeout mode answers late
            if method == "alipay.data.dataservice.bill.downloadurl.query":
                return self.reply(method, self.bill_url(biz, request.host_url.rstrip("/")))
            handler = {"alipay.trade.query": self.trade_query, "alipay.trade.close": self.trade_close,
                       "alipay.trade.fastpay.refund.query": self.refund_query}[method]
            return self.reply(method, handler(biz))
        except GatewayError as error:
            if page:
                return _page("支付宝 - 错误", f"<h1>错误</h1><p>错误代码 {html.escape(error.sub_code)}</p>"
                                            f"<p>{html.escape(error.sub_msg)}</p>", 400)
            node = {"code": error.code, "msg": GATEWAY_MESSAGES.get(error.code, ""), "sub_code": error.sub_code,
                    "sub_msg": error.sub_msg}
            name = method if method in API_METHODS else None
            return self.reply(name, node, signed=error.signed)

    def check_common(self, params: dict, page: bool) -> None:
        for name, sub in (("method", "isv.missing-method"), ("app_id", "isv.missing-app-id"),
                          ("sign", "isv.missing-signature"), ("sign_type", "isv.missing-signature-type"),
                          ("timestamp", "isv.missing-timestamp"), ("version", "isv.missing-version")):
            if not params.get(name):
                raise GatewayError("40001", sub, f"缺少{name}参数")
        with self.lock:
            app_id, app_key = self.app_id, self.app_public_key
        if params["app_id"] != app_id or not app_key:
            raise GatewayError("40002", "isv.invalid-app-id", "无效的AppID参数", signed=False)
        if params.get("charset", "utf-8").lower() != "utf-8":
            raise GatewayError("40002", "isv.invalid-charset", "字符集错误")
        if params["sign_type"] != "RSA2":
            raise GatewayError("40002", "isv.invalid-signature-type", "无效的签名类型")
        try:
            at = datetime.strptime(params["timestamp"], TIME_FORMAT).replace(tzinfo=CHINA)
        except ValueError:
            raise GatewayError("40002", "isv.invalid-timestamp", "非法的时间戳参数") from None
        if len(params["timestamp"]) != 19 or (not page and abs(now_china() - at) > TIMESTAMP_WINDOW):
            raise GatewayError("40002", "isv.invalid-timestamp", "非法的时间戳参数")
        if params.get("format", "JSON").upper() != "JSON":
            raise GatewayError("40002", "isv.invalid-format", "无效的数据格式")
        if params["version"] != "1.0":
            raise GatewayError("40002", "isv.invalid-version", "无效的版本号")
        if not rsa.verify(app_key, content_to_sign(params), params["sign"]):
            raise GatewayError("40002", "isv.invalid-signature",
                               "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配")

    @staticmethod
    def biz(params: dict) -> dict:
        try:
            biz = json.loads(params.get("biz_content") or "")
        except ValueError:
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "biz_content 不是 JSON") from None
        if not isinstance(biz, dict):
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "biz_content 不是 JSON 对象")
        return biz

    def reply(self, method: str | None, node: dict, signed: bool = True) -> Response:
        """`{"<method>_response": node, "sign": ...}`, signed over the node's exact text."""
        name = method.replace(".", "_") + "_response" if method else "error_response"
        node_text = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
        with self.lock:
            mode = self.behaviour["reply_sign"]
        body = f'{{"{name}":{node_text}'
        if signed and mode != "none":
            if mode == "ok":
                key = self.private_key
            else:
                with self.lock:
                    if self._stranger_key is None:
                        self._stranger_key = generate_keypair()[0]
                    key = self._stranger_key
            body += f',"sign":"{rsa.sign(key, node_text)}"'
        return Response(body + "}", mimetype="application/json", content_type="application/json;charset=utf-8")

    def _find(self, biz: dict) -> dict:
        """The trade named by trade_no (first) or out_trade_no; GatewayError ACQ.TRADE_NOT_EXIST."""
        if not biz.get("out_trade_no") and not biz.get("trade_no"):
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "out_trade_no 与 trade_no 不能同时为空")
        with self.lock:
            if biz.get("trade_no"):
                order = next((o for o in self.orders.values() if o["trade_no"] == biz["trade_no"]), None)
            else:
                order = self.orders.get(str(biz["out_trade_no"]))
            if order is None:
                raise GatewayError("40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")
            self._expire(order)
            return order

    # --- page pay and the cashier ----------------------------------------------------------------------------

    def page_pay(self, request: Request, params: dict) -> Response:
        biz = self.biz(params)
        out_trade_no = str(biz.get("out_trade_no") or "")
        if not out_trade_no or len(out_trade_no) > 64:
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "out_trade_no 无效")
        amount = parse_amount(biz.get("total_amount"))
        if amount is None:
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "total_amount 格式错误 (元, 至多两位小数)")
        subject = str(biz.get("subject") or "")
        if not subject:
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "缺少 subject")
        if biz.get("product_code") != "FAST_INSTANT_TRADE_PAY":
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "product_code 须为 FAST_INSTANT_TRADE_PAY")
        expire = None
        if biz.get("time_expire"):
            try:
                expire = datetime.strptime(str(biz["time_expire"]), TIME_FORMAT).replace(tzinfo=CHINA)
            except ValueError:
                raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "time_expire 格式错误") from None
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                if expire and now_china() >= expire:
                    raise GatewayError("40004", "ACQ.TRADE_HAS_CLOSE", "交易已过期")
                stamp = now_china()
                order = {"out_trade_no": out_trade_no, "amount": amount, "subject": subject,
                         "trade_no": stamp.strftime("%Y%m%d") + "22001" + "".join(
                             secrets.choice("0123456789") for _ in range(15)),
                         "trade_status": "WAIT_BUYER_PAY", "notify_url": params.get("notify_url", ""),
                         "return_url": params.get("return_url", ""), "time_expire": expire, "created_at": stamp,
                         "paid_at": None, "buyer_id": "", "refunded": 0, "notifications_sent": 0,
                         "notify_status": "none", "queries": 0, "closes": 0}
                self.orders[out_trade_no] = order
            elif order["amount"] != amount or order["subject"] != subject:
                raise GatewayError("40004", "ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            self._expire(order)
            if order["trade_status"] in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                raise GatewayError("40004", "ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if order["trade_status"] == "TRADE_CLOSED":
                raise GatewayError("40004", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            trade_no, deadline = order["trade_no"], fmt(order["time_expire"])
        action = html.escape(f"{request.script_root}/_sim/cashier/{quote(out_trade_no, safe='')}")
        return _page("支付宝 - 收银台", (
            f"<h1>支付宝收银台 (模拟)</h1><p>{html.escape(subject)}</p>"
            f"<p>订单号 {html.escape(out_trade_no)}<br>交易号 {trade_no}</p>"
            f"<p style=\"font-size:2em\">¥{yuan(amount)}</p>"
            + (f"<p>请在 {deadline} 前付款</p>" if deadline else "")
            + f"<form method=\"post\" action=\"{action}\"><button type=\"submit\" name=\"pay\" value=\"1\">"
              "付款</button></form>"))

    def cashier_pay(self, out_trade_no: str) -> Response:
        status, data = self.pay(out_trade_no, None, None)
        if status != 200:
            return _page("支付宝 - 无法付款", f"<h1>无法付款</h1><p>{html.escape(data.get('error', ''))}</p>", status)
        with self.lock:
            order = self.orders.get(out_trade_no)
            return_url = order["return_url"] if order else ""
            fields = self._return_fields(order) if order else {}
        if not return_url:
            return _page("支付宝 - 付款成功", "<h1>付款成功</h1>")
        separator = "&" if urlsplit(return_url).query else "?"
        return Response(status=302, headers={"Location": f"{return_url}{separator}{urlencode(fields)}"})

    def _return_fields(self, order: dict) -> dict:
        fields = {"charset": "utf-8", "out_trade_no": order["out_trade_no"], "method": "alipay.trade.page.pay.return",
                  "total_amount": yuan(order["amount"]), "trade_no": order["trade_no"], "auth_app_id": self.app_id,
                  "version": "1.0", "app_id": self.app_id, "sign_type": "RSA2", "seller_id": self.seller_id,
                  "timestamp": fmt(now_china())}
        fields["sign"] = rsa.sign(self.private_key, content_to_sign(fields, ("sign", "sign_type")))
        return fields

    def pay(self, out_trade_no: str, notify: str | None, duplicates) -> tuple[int, dict]:
        """The buyer pays: (HTTP status, JSON). Shared by /_sim/pay and the cashier's 付款 button."""
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                return 404, {"error": f"no trade {out_trade_no!r} (the buyer never opened its page pay)"}
            self._expire(order)
            if order["trade_status"] != "WAIT_BUYER_PAY":
                return 409, {"error": f"trade is {order['trade_status']}", "out_trade_no": out_trade_no}
            order["trade_status"] = "TRADE_SUCCESS"
            order["paid_at"] = now_china()
            order["buyer_id"] = "2088" + "".join(secrets.choice("0123456789") for _ in range(12))
            mode = notify if notify in ("send", "drop") else self.behaviour["notify"]
            copies = duplicates if isinstance(duplicates, int) and duplicates >= 0 else \
                self.behaviour["notify_duplicates"]
            if not order["notify_url"]:
                order["notify_status"] = "none"
            elif mode == "drop":
                order["notify_status"] = "dropped"
            else:
                order["notify_status"] = "sending"
                form = self._notification(order)
                threading.Thread(target=self._deliver, daemon=True,
                                 args=(self.generation, out_trade_no, order["notify_url"], form, copies)).start()
            return 200, {"out_trade_no": out_trade_no, "trade_no": order["trade_no"], "amount": order["amount"],
                         "notify_status": order["notify_status"]}

    def _notification(self, order: dict) -> dict:
        amount = yuan(order["amount"])
        tamper = self.behaviour["notify_tamper"]
        app_id = "2021000000000000" if tamper == "app_id" else self.app_id
        form = {"gmt_create": fmt(order["created_at"]), "charset": "utf-8", "gmt_payment": fmt(order["paid_at"]),
                "notify_time": fmt(now_china()), "subject": order["subject"], "buyer_id": order["buyer_id"],
                "buyer_logon_id": "138****0000", "invoice_amount": amount, "version": "1.0",
                "notify_id": uuid.uuid4().hex + "1", "notify_type": "trade_status_sync",
                "fund_bill_list": json.dumps([{"amount": amount, "fundChannel": "ALIPAYACCOUNT"}],
                                             separators=(",", ":")),
                "out_trade_no": order["out_trade_no"], "total_amount": amount, "trade_status": "TRADE_SUCCESS",
                "trade_no": order["trade_no"], "auth_app_id": app_id, "receipt_amount": amount,
                "point_amount": "0.00", "buyer_pay_amount": amount, "app_id": app_id, "sign_type": "RSA2",
                "seller_id": self.seller_id}
        form["sign"] = rsa.sign(self.private_key, content_to_sign(form, ("sign", "sign_type")))
        if tamper == "amount":
            form["total_amount"] = yuan(order["amount"] + 1)
        return form

    def _deliver(self, generation: str, out_trade_no: str, url: str, form: dict, copies: int) -> None:
        answered = False
        for delay in self.notify_delays:
            time.sleep(delay)
            answered = self._post_notification(generation, out_trade_no, url, form)
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
            time.sleep(0.05)
            if self._post_notification(generation, out_trade_no, url, form) is None:
                return

    def _post_notification(self, generation: str, out_trade_no: str, url: str, form: dict) -> bool | None:
        """True when answered `success`; None when the simulator was reset meanwhile."""
        with self.lock:
            order = self.orders.get(out_trade_no)
            if self.generation != generation or order is None:
                return None
            order["notifications_sent"] += 1
        try:
            with outbound.session(allow_private=True) as session:  # a demo server calling its neighbours
                response = session.post(url, data=form, timeout=5, allow_redirects=False)
            return response.status_code == 200 and response.content == b"success"
        except Exception:  # noqa: BLE001 - any failure to deliver is "not answered"
            return False

    # --- query, close ----------------------------------------------------------------------------------------

    def trade_query(self, biz: dict) -> dict:
        order = self._find(biz)
        with self.lock:
            order["queries"] += 1
            node = {"code": "10000", "msg": "Success", "trade_no": order["trade_no"],
                    "out_trade_no": order["out_trade_no"], "trade_status": order["trade_status"],
                    "total_amount": yuan(order["amount"])}
            if order["paid_at"]:
                node.update(buyer_logon_id="138****0000", buyer_user_id=order["buyer_id"],
                            buyer_pay_amount=yuan(order["amount"]), receipt_amount=yuan(order["amount"]),
                            invoice_amount=yuan(order["amount"]), point_amount="0.00",
                            send_pay_date=fmt(order["paid_at"]))
            return node

    def trade_close(self, biz: dict) -> dict:
        order = self._find(biz)
        with self.lock:
            order["closes"] += 1
            if order["trade_status"] != "WAIT_BUYER_PAY":
                raise GatewayError("40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            order["trade_status"] = "TRADE_CLOSED"
            return {"code": "10000", "msg": "Success", "trade_no": order["trade_no"],
                    "out_trade_no": order["out_trade_no"]}

    # --- refunds ---------------------------------------------------------------------------------------------

    def trade_refund(self, biz: dict) -> Response:
        method = "alipay.trade.refund"
        amount = parse_amount(biz.get("refund_amount"))
        if amount is None:
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "refund_amount 格式错误 (元, 至多两位小数)")
        order = self._find(biz)
        request_no = str(biz.get("out_request_no") or order["out_trade_no"])
        delay = 0.0
        with self.lock:
            key = (order["out_trade_no"], request_no)
            refund = self.refunds.get(key)
            if refund is not None and refund["status"] in ("succeeded", "processing"):
                refund["requests"] += 1  # the same request again: nothing moves
                return self.reply(method, self._refund_node(order, fund_change="N"))
            if order["trade_status"] == "WAIT_BUYER_PAY":
                raise GatewayError("40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            if order["trade_status"] == "TRADE_CLOSED":
                raise GatewayError("40004", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            committed = sum(r["amount"] for r in self.refunds.values() if r["out_trade_no"] == order["out_trade_no"]
                            and r["status"] in ("succeeded", "processing"))
            if committed + amount > order["amount"]:
                raise GatewayError("40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
            if refund is None:
                refund = {"out_trade_no": order["out_trade_no"], "out_request_no": request_no,
                          "trade_no": order["trade_no"], "amount": amount, "requests": 0, "queries": 0,
                          "status": "", "pending_queries": 0, "done_at": None}
                self.refunds[key] = refund
            refund["requests"] += 1
            refund["amount"] = amount
            mode = self.behaviour["refund"]
            if mode == "fail":
                refund["status"] = "failed"
                raise GatewayError("40004", "ACQ.REASON_TRADE_BEEN_FREEZEN", "请求退款的交易被冻结")
            if mode == "abnormal":
                refund["status"] = "abnormal"
                raise GatewayError("40004", "ACQ.SELLER_BALANCE_NOT_ENOUGH", "卖家余额不足")
            if mode == "processing":
                refund["status"] = "processing"
                refund["pending_queries"] = self.behaviour["refund_processing_queries"]
                node = self._refund_node(order, fund_change="N")
            else:
                self._pay_out(order, refund)
                node = self._refund_node(order, fund_change="Y")
                if mode == "timeout":
                    delay = self.behaviour["refund_timeout_ms"] / 1000
        if delay:
            time.sleep(delay)
        return self.reply(method, node)

    def _pay_out(self, order: dict, refund: dict) -> None:
        refund["status"] = "succeeded"
        refund["done_at"] = now_china()
        order["refunded"] += refund["amount"]
        if order["refunded"] >= order["amount"]:
            order["trade_status"] = "TRADE_CLOSED"  # fully refunded (send_pay_date stays)

    def _refund_node(self, order: dict, fund_change: str) -> dict:
        return {"code": "10000", "msg": "Success", "trade_no": order["trade_no"],
                "out_trade_no": order["out_trade_no"], "buyer_logon_id": "138****0000",
                "fund_change": fund_change, "refund_fee": yuan(order["refunded"]),
                "gmt_refund_pay": fmt(now_china()), "buyer_user_id": order["buyer_id"], "send_back_fee": "0.00"}

    def refund_query(self, biz: dict) -> dict:
        order = self._find(biz)
        request_no = str(biz.get("out_request_no") or "")
        if not request_no:
            raise GatewayError("40004", "ACQ.INVALID_PARAMETER", "缺少 out_request_no")
        with self.lock:
            node = {"code": "10000", "msg": "Success", "trade_no": order["trade_no"],
                    "out_trade_no": order["out_trade_no"]}
            refund = self.refunds.get((order["out_trade_no"], request_no))
            if refund is None:
                return node
            refund["queries"] += 1
            if refund["status"] == "processing":
                if refund["pending_queries"] > 0:
                    refund["pending_queries"] -= 1
                    return node
                self._pay_out(order, refund)
            if refund["status"] != "succeeded":
                return node
            node.update(out_request_no=request_no, refund_amount=yuan(refund["amount"]),
                        total_amount=yuan(order["amount"]), refund_status="REFUND_SUCCESS",
                        gmt_refund_pay=fmt(refund["done_at"]))
            return node

    # --- bills -----------------------------------------------------------------------------------------------

    def bill_url(self, biz: dict, base_url: str) -> dict:
        if biz.get("bill_type") not in ("trade", "signcustomer"):
            raise GatewayError("40004", "isp.bill_type_error", "账单类型错误")
        bill_date = str(biz.get("bill_date") or "")
        try:
            if len(bill_date) == 10:
                start = datetime.strptime(bill_date, "%Y-%m-%d").date()
                end = start + timedelta(days=1)
            elif len(bill_date) == 7:
                start = datetime.strptime(bill_date, "%Y-%m").date()
                end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
            else:
                raise ValueError
        except ValueError:
            raise GatewayError("40004", "isp.bill_date_format_error", "账单日期格式错误") from None
        rows = self._bill_rows(start, end) if biz["bill_type"] == "trade" else []
        if not rows:
            raise GatewayError("40004", "isp.bill_not_exist", "账单不存在")
        stamp = bill_date.replace("-", "")
        content = self._bill_zip(rows, start, end, stamp)
        token = secrets.token_hex(16)
        name = f"{self.seller_id}_{stamp}.csv.zip"
        with self.lock:
            now = time.monotonic()
            self.bills = {t: b for t, b in self.bills.items() if now - b[1] < self.bill_url_ttl}
            self.bills[token] = (content, now, name)
        query = urlencode({"bizType": "trade", "userId": self.seller_id, "fileType": "csv.zip", "bizDates": stamp,
                           "downloadFileName": name, "fileId": token})
        return {"code": "10000", "msg": "Success", "bill_download_url": f"{base_url}/downloadBillFile.resource?{query}"}

    def download_bill(self, token: str) -> Response:
        with self.lock:
            bill = self.bills.get(token)
            if bill is None or time.monotonic() - bill[1] >= self.bill_url_ttl:
                self.bills.pop(token, None)
                return Response("账单下载地址已失效 (the bill URL lives 30 s)", status=404,
                                content_type="text/plain; charset=utf-8")
        content, _, name = bill
        return Response(content, content_type="application/octet-stream",
                        headers={"Content-Disposition": f"attachment; filename={name}"})

    def _bill_rows(self, start: date, end: date) -> list[dict]:
        """Lines of the China days [start, end): paid trades (planted amounts applied), refunds, planted extras."""
        rows: list[dict] = []
        today = now_china()
        with self.lock:
            seen = set()
            for order in self.orders.values():
                if order["paid_at"] and start <= order["paid_at"].date() < end:
                    seen.add(order["out_trade_no"])
                    rows.append({"order": order, "kind": "交易", "at": order["paid_at"],
                                 "amount": self.plants.get(order["out_trade_no"], order["amount"]),
                                 "request_no": ""})
            for refund in self.refunds.values():
                if refund["status"] == "succeeded" and start <= refund["done_at"].date() < end:
                    order = self.orders.get(refund["out_trade_no"])
                    if order:
                        rows.append({"order": order, "kind": "退款", "at": refund["done_at"],
                                     "amount": -refund["amount"], "request_no": refund["out_request_no"]})
            if start <= today.date() < end:
                for out_trade_no, amount in self.plants.items():
                    if out_trade_no in seen:
                        continue
                    order = self.orders.get(out_trade_no)
                    trade_no = order["trade_no"] if order else self.ghosts.setdefault(
                        out_trade_no, today.strftime("%Y%m%d") + "22001" + "".join(
                            secrets.choice("0123456789") for _ in range(15)))
                    ghost = {"out_trade_no": out_trade_no, "subject": order["subject"] if order else "点卡",
                             "created_at": today, "trade_no": trade_no}
                    rows.append({"order": ghost, "kind": "交易", "at": today, "amount": amount, "request_no": ""})
        rows.sort(key=lambda r: r["at"])
        return rows

    def _bill_zip(self, rows: list[dict], start: date, end: date, stamp: str) -> bytes:
        span = (f"#起始日期：[{start:%Y年%m月%d日} 00:00:00]   终止日期：[{end:%Y年%m月%d日} 00:00:00]")
        exported = f"#导出时间：[{now_china():%Y年%m月%d日 %H:%M:%S}]"
        detail = io.StringIO()
        writer = csv.writer(detail, lineterminator="\r\n")
        for line in ("#支付宝业务明细查询", f"#账号：[{self.seller_id}]", span,
                     "#-----------------------------------------业务明细列表----------------------------------------"):
            detail.write(line + "\r\n")
        writer.writerow(BILL_HEADER)
        paid = [r for r in rows if r["kind"] == "交易"]
        refunds = [r for r in rows if r["kind"] == "退款"]
        for r in rows:
            o = r["order"]
            amount = yuan_signed(r["amount"])
            request_no = r["request_no"] + ("\t" if r["request_no"] else "")
            writer.writerow([o["trade_no"] + "\t", o["out_trade_no"] + "\t", r["kind"], o["subject"],
                             fmt(o["created_at"]), fmt(r["at"]), "", "", "", "", "138****0000", amount, amount,
                             *["0.00"] * 5, "", "0.00", "0.00", request_no, "0.00", "0.00", ""])
        paid_total, refund_total = sum(r["amount"] for r in paid), sum(r["amount"] for r in refunds)
        for line in ("#-----------------------------------------业务明细列表结束------------------------------------",
                     f"#交易合计：{len(paid)}笔，商家实收共{yuan_signed(paid_total)}元，商家优惠共0.00元",
                     f"#退款合计：{len(refunds)}笔，商家实收退款共{yuan_signed(refund_total)}元，商家优惠退款共0.00元",
                     exported):
            detail.write(line + "\r\n")
        summary = io.StringIO()
        for line in ("#支付宝业务汇总查询", f"#账号：[{self.seller_id}]", span,
                     "#-----------------------------------------业务汇总列表----------------------------------------"):
            summary.write(line + "\r\n")
        net = yuan_signed(paid_total + refund_total)
        csv.writer(summary, lineterminator="\r\n").writerows([
            SUMMARY_HEADER, ["", "", len(paid), len(refunds), net, net, "0.00", "0.00", "0.00", "0.00", "0.00", net],
            ["合计", "", len(paid), len(refunds), net, net, "0.00", "0.00", "0.00", "0.00", "0.00", net]])
        for line in ("#----------------------------------------业务汇总列表结束-------------------------------------",
                     exported):
            summary.write(line + "\r\n")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for suffix, text in (("业务明细.csv", detail.getvalue()), ("业务明细(汇总).csv", summary.getvalue())):
                info = _GbkName(f"{self.seller_id}_{stamp}_{suffix}", date_time=now_china().timetuple()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, text.encode("gb18030"))
        return buffer.getvalue()


def yuan_signed(fen: int) -> str:
    return ("-" if fen < 0 else "") + yuan(abs(fen))


def merchant_settings(url: str) -> dict:
    """New app keys registered with the simulator at `url`; the alipay channel settings pointing at it."""
    private, public = generate_keypair()
    app_id = "2021" + "".join(secrets.choice("0123456789") for _ in range(12))
    with outbound.session(allow_private=True) as session:  # a demo server calling its neighbours
        registered = session.post(f"{url}/_sim/merchant", json={"app_id": app_id, "public_key": public}, timeout=10)
        registered.raise_for_status()
        keys = session.get(f"{url}/_sim/keys", timeout=10)
        keys.raise_for_status()
    data = keys.json()
    return {"app_id": data["app_id"], "private_key": private, "alipay_public_key": data["alipay_public_key"],
            "seller_id": data["seller_id"], "gateway": f"{url}/gateway.do"}


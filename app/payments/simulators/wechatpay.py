"""A WeChat Pay API v3 simulator (native pay, refunds, trade bill) for development, the demo and tests: a plain
WSGI app standing in for https://api.mch.weixin.qq.com (point the channel's `api_base` at it). Thread-safe.

What it checks, as WeChat Pay does (/work/shared/PROTOCOLS.md sections 2 and 5):
- Every /v3 request needs `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",
  timestamp="..",serial_no=".."`: the merchant registered with that mchid, its serial_no, a timestamp within
  300 s, a nonce never seen before (remembered 10 min) and a SHA256withRSA signature, by the registered merchant
  public key, over `METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n` (URL = the raw path and query as sent). Otherwise
  401 {"code": "SIGN_ERROR", "message"}, unsigned (WeChat cannot sign for a caller it did not authenticate).
- Bodies are JSON objects; amounts are JSON integers in fen (10.00, "1000", true: 400 PARAM_ERROR), currency CNY.
- Every other answer (200, 204, 4xx) carries Wechatpay-Timestamp/-Nonce/-Signature/-Serial/-Signature-Type,
  signed with the simulator's platform key over `TIMESTAMP\\nNONCE\\nBODY\\n`. Only the bill file is unsigned.

API (errors are {"code", "message"}; codes as WeChat's public error tables name them):
- `POST /v3/pay/transactions/native` {appid, mchid, description, out_trade_no, notify_url, amount{total,
  currency}, time_expire?} -> 200 {"code_url"}. The same out_trade_no again with the same amount answers the
  same code_url; with another amount 400 INVALID_REQUEST; paid 400 ORDERPAID; closed 400 ORDER_CLOSED;
  appid not the merchant's 400 APPID_MCHID_NOT_MATCH. notify_url may be http (real WeChat wants https) but must
  carry no query string.
- `GET /v3/pay/transactions/out-trade-no/{no}?mchid=` -> the transaction (trade_state NOTPAY, SUCCESS, REFUND
  once a refund was accepted, CLOSED); unknown: 404 ORDER_NOT_EXIST. An expired unpaid order stays NOTPAY (it
  can no longer be paid).
- `POST /v3/pay/transactions/out-trade-no/{no}/close` {mchid} -> 204 (also for an order already closed);
  paid: 400 ORDERPAID; unknown: 404 ORDER_NOT_EXIST.
- `POST /v3/refund/domestic/refunds` {transaction_id | out_trade_no, out_refund_no, reason?, notify_url?,
  amount{refund, total, currency}} -> the refund {refund_id, out_refund_no, transaction_id, out_trade_no,
  status, success_time?, amount{...}, ...}. amount.total must equal the order total and the refunds of an
  order cannot exceed it (400 INVALID_REQUEST); an unknown order is 404 RESOURCE_NOT_EXISTS; one out_refund_no
  refunds once: asking again answers its current state (other parameters: 400 INVALID_REQUEST).
- `GET /v3/refund/domestic/refunds/{out_refund_no}` -> the refund; unknown: 404 RESOURCE_NOT_EXISTS.
- `GET /v3/bill/tradebill?bill_date=YYYY-MM-DD&bill_type=ALL|SUCCESS|REFUND[&tar_type=GZIP]` -> {"hash_type":
  "SHA1", "hash_value", "download_url"}; a day without trades: 400 NO_STATEMENT_EXIST. Today's bill is served
  too (the real one appears on T+1). `GET /v3/billdownload/file?token=..` (signed request, unsigned answer)
  serves the file for 5 minutes, then 400 INVALID_REQUEST. The file: the 27-column ALL header, one row per
  payment (交易状态 SUCCESS, by its China success day) and per successful refund (REFUND, by its success day),
  every cell starting with a backquote, amounts in yuan, then the summary header and row.

Notifications: POSTed (JSON, background thread) to the order's notify_url on payment (TRANSACTION.SUCCESS) and
to the refund's notify_url when a refund ends (REFUND.SUCCESS / REFUND.ABNORMAL), as {id, create_time,
resource_type: "encrypt-resource", event_type, summary, resource{original_type, algorithm: AEAD_AES_256_GCM,
ciphertext, associated_data ("transaction" / "refund"), nonce (12 characters)}}, encrypted with the merchant's
api_v3_key and signed with the platform key. Resent after 0.2, 0.5, 1, 2 and 3 s (6 tries at most) until the
answer is HTTP 200 or 204; each try is signed anew (new timestamp and nonce, same `id` and body).

Control API (JSON, unsigned; app/payments/simulators/__init__.py has the common part):
- `POST /_sim/merchant` {"mchid", "appid", "serial_no", "public_key" (PEM), "api_v3_key" (32 characters)};
  `GET /_sim/keys` -> {"platform_serial", "platform_public_key"}.
- `POST /_sim/pay/<out_trade_no>` {"notify"?: "send"|"drop", "duplicates"?: int} -> 200 {"out_trade_no",
  "trade_no", "amount", "notify_status": "queued"|"dropped"}; 404 unknown; 409 paid, closed or expired.
- `GET /_sim/orders`, `GET /_sim/refunds` (status is WeChat's: SUCCESS, PROCESSING, ABNORMAL; "REFUSED" for a
  request refused in "fail" mode, which refunded nothing and may be asked again), `GET /_sim/notifications`
  (every notification: id, event_type, out_trade_no, out_refund_no, attempts, answers, answered).
- `POST /_sim/behaviour` (GET reads it) {"notify": "send"|"drop", "notify_duplicates": int (extra copies, same
  id, sent after delivery), "notify_mode": "normal" | "stale" (Wechatpay-Timestamp 400 s old, correctly signed)
  | "unknown_serial" (signed by another key under a serial the merchant does not know) | "tampered" (body
  altered after signing), "refund": "success" (SUCCESS at once, REFUND.SUCCESS notified) | "processing"
  (PROCESSING; the query answers PROCESSING `refund_processing_queries` times, then SUCCESS and notifies) |
  "timeout" (refunds at once, answers after `refund_timeout_ms`) | "fail" (403 NOT_ENOUGH, nothing refunded) |
  "abnormal" (ABNORMAL at once: the money left the merchant but could not reach the buyer; REFUND.ABNORMAL
  notified), "refund_timeout_ms": int, "refund_processing_queries": int, "bill_corrupt": bool (the served file
  no longer matches hash_value)}.
- `POST /_sim/bill/plant` {"out_trade_no", "amount"}: the bill shows that amount (fen) for that order's
  payment; an order it never saw becomes an extra paid line on the bill of the (China) day it was planted.
- `POST /_sim/reset`: forgets orders, refunds, notifications, plants, bills and behaviour (keeps merchants).
"""
from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from urllib.parse import quote, unquote, urlsplit

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from werkzeug.wrappers import Request, Response

from app.payments.channels import rsa

CHINA = timezone(timedelta(hours=8))
MAX_SKEW_SECONDS = 300
NONCE_MEMORY_SECONDS = 600
BILL_URL_SECONDS = 300
NOTIFY_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 3.0)
NOTIFY_TIMEOUT_SECONDS = 3
NOTIFY_MODES = ("normal", "stale", "unknown_serial", "tampered")
REFUND_MODES = ("success", "processing", "timeout", "fail", "abnormal")
DEFAULT_BEHAVIOUR = {"notify": "send", "notify_duplicates": 0, "notify_mode": "normal", "refund": "success",
                     "refund_timeout_ms": 3000, "refund_processing_queries": 1, "bill_corrupt": False}
OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')
TRADE_STATE_DESC = {"NOTPAY": "未支付", "SUCCESS": "支付成功", "REFUND": "转入退款", "CLOSED": "已关闭"}
BILL_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
               "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
               "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注")
BILL_SUMMARY_HEADER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
FEE_RATE_PER_MILLE = 6  # 0.60%


class SimError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _keypair() -> tuple[str, str]:
    key = rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


_KEYS: dict[str, object] = {}


def _sign(private_pem: str, message: str) -> str:
    """SHA256withRSA, base64, the loaded key kept (loading validates the key: ~0.1 s each time)."""
    key = _KEYS.get(private_pem)
    if key is None:
        key = _KEYS[private_pem] = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return base64.b64encode(key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def _now_china() -> datetime:
    return datetime.now(CHINA).replace(microsecond=0)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(CHINA).strftime("%Y-%m-%dT%H:%M:%S+08:00")


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _fee_fen(fen: int) -> int:
    return (fen * FEE_RATE_PER_MILLE + 500) // 1000


def _digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


def _fen(value, field: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimError(400, "PARAM_ERROR", f"输入源“/body/{field}”映射到值字段字段规则校验失败，字段类型不正确"
                                           f"（应为整数，单位分）: {value!r}")
    if value < minimum or value > 10 ** 12:
        raise SimError(400, "PARAM_ERROR", f"/body/{field} 超出范围: {value}")
    return value


def _text(payload: dict, field: str, pattern: re.Pattern | None = None, max_len: int = 256,
          required: bool = True) -> str:
    value = payload.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > max_len \
            or (pattern is not None and not pattern.fullmatch(value)):
        raise SimError(400, "PARAM_ERROR", f"输入源“/body/{field}”校验失败: {value!r}")
    return value


def _url(payload: dict, field: str, required: bool = True) -> str:
    value = _text(payload, field, max_len=256, required=required)
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise SimError(400, "PARAM_ERROR", f"{field} 须为不带参数的 http(s) 地址: {value!r}")
    return value


class WechatPaySimulator:
    """WeChat Pay API v3 over WSGI (see the module docstring). `platform_serial` names the platform key: a hex
    certificate serial by default, or e.g. "PUB_KEY_ID_0112..." to act as a WeChat Pay public key id."""

    def __init__(self, platform_serial: str | None = None):
        self.lock = threading.RLock()
        self.platform_private, self.platform_public = _keypair()
        self.platform_serial = platform_serial or secrets.token_hex(20).upper()
        self._stranger_private: str | None = None
        self.merchants: dict[str, dict] = {}
        self.nonces: dict[tuple[str, str], float] = {}
        self.generation = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self.orders: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.notifications: list[dict] = []
        self.plants: dict[str, dict] = {}
        self.bills: dict[str, dict] = {}
        self.behaviour = dict(DEFAULT_BEHAVIOUR)
        self.generation += 1

    # --- WSGI -------------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            if request.path.startswith("/_sim/"):
                response = self._control(request)
            elif request.path.startswith("/v3/"):
                response = self._api(request)
            else:
                response = _json({"code": "NOT_FOUND", "message": "no such path"}, 404)
        except SimError as exc:
            response = _json({"code": exc.code, "message": exc.message}, exc.status)
        return response(environ, start_response)

    # --- signing ------------------------------------------------------------------------------------------

    def _sign_headers(self, text: str, *, ts: int | None = None, serial: str | None = None,
                      private_pem: str | None = None) -> dict:
        timestamp, nonce = str(int(time.time()) if ts is None else ts), secrets.token_hex(16)
        signature = _sign(private_pem or self.platform_private, f"{timestamp}\n{nonce}\n{text}\n")
        return {"Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature,
                "Wechatpay-Serial": serial or self.platform_serial,
                "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
                "Request-ID": uuid.uuid4().hex.upper()}

    def _signed(self, status: int, data: dict | None = None) -> Response:
        text = "" if data is None else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        response = Response(text.encode(), status=status, headers=self._sign_headers(text))
        if data is not None:
            response.headers["Content-Type"] = "application/json; charset=utf-8"
        return response

    def _stranger(self) -> str:
        with self.lock:
            if self._stranger_private is None:
                self._stranger_private = _keypair()[0]
            return self._stranger_private

    # --- authentication -----------------------------------------------------------------------------------

    def _authenticate(self, request: Request, body: bytes) -> dict:
        scheme, _, rest = request.headers.get("Authorization", "").partition(" ")
        if scheme != "WECHATPAY2-SHA256-RSA2048":
            raise SimError(401, "SIGN_ERROR", "Authorization 缺失或认证类型不是 WECHATPAY2-SHA256-RSA2048")
        fields = dict(AUTH_FIELD.findall(rest))
        if any(not fields.get(k) for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no")):
            raise SimError(401, "SIGN_ERROR", "Authorization 缺少 mchid/nonce_str/signature/timestamp/serial_no")
        with self.lock:
            merchant = self.merchants.get(fields["mchid"])
        if merchant is None:
            raise SimError(401, "SIGN_ERROR", "商户号未登记")
        if fields["serial_no"] != merchant["serial_no"]:
            raise SimError(401, "SIGN_ERROR", "商户证书序列号不正确")
        ts = fields["timestamp"]
        if not ts.isdecimal() or abs(time.time() - int(ts)) > MAX_SKEW_SECONDS:
            raise SimError(401, "SIGN_ERROR", "请求的时间戳与当前时间相差超过 5 分钟")
        uri = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
        if not uri:
            query = request.environ.get("QUERY_STRING", "")
            uri = quote(request.path) + (f"?{query}" if query else "")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SimError(401, "SIGN_ERROR", "请求体不是 UTF-8") from None
        message = f"{request.method}\n{uri}\n{ts}\n{fields['nonce_str']}\n{text}\n"
        if not rsa.verify(merchant["public_key"], message, fields["signature"]):
            raise SimError(401, "SIGN_ERROR", "签名验证失败")
        now = time.time()
        with self.lock:
            key = (merchant["mchid"], fields["nonce_str"])
            if key in self.nonces:
                raise SimError(401, "SIGN_ERROR", "nonce_str 重复使用")
            self.nonces = {k: t for k, t in self.nonces.items() if now - t < NONCE_MEMORY_SECONDS}
            self.nonces[key] = now
        return merchant

    # --- the API ------------------------------------------------------------------------------------------

    def _api(self, request: Request) -> Response:
        body = request.get_data()
        merchant = self._authenticate(request, body)
        try:
            return self._route(request, merchant, body)
        except SimError as exc:
            return self._signed(exc.status, {"code": exc.code, "message": exc.message})

    def _route(self, request: Request, merchant: dict, body: bytes) -> Response:
        path, method = request.path, request.method
        if method == "GET" and path == "/v3/billdownload/file":
            return self._bill_file(merchant, request.args.get("token", ""))
        if method == "GET" and path == "/v3/bill/tradebill":
            return self._tradebill(merchant, request.args, request.host_url)
        if method == "POST" and path == "/v3/pay/transactions/native":
            return self._native(merchant, self._payload(body))
        if method == "POST" and path == "/v3/refund/domestic/refunds":
            return self._refund(merchant, self._payload(body))
        prefix = "/v3/pay/transactions/out-trade-no/"
        if path.startswith(prefix):
            rest = path[len(prefix):]
            if method == "GET" and "/" not in rest:
                return self._query(merchant, unquote(rest), request.args.get("mchid", ""))
            if method == "POST" and rest.endswith("/close") and rest.count("/") == 1:
                return self._close(merchant, unquote(rest[:-len("/close")]), self._payload(body))
        prefix = "/v3/refund/domestic/refunds/"
        if method == "GET" and path.startswith(prefix) and "/" not in path[len(prefix):]:
            return self._query_refund(merchant, unquote(path[len(prefix):]))
        raise SimError(404, "NOT_FOUND", "请求的资源不存在")

    @staticmethod
    def _payload(body: bytes) -> dict:
        try:
            payload = json.loads(body)
        except ValueError:
            raise SimError(400, "PARAM_ERROR", "请求体不是合法的 JSON") from None
        if not isinstance(payload, dict):
            raise SimError(400, "PARAM_ERROR", "请求体须为 JSON 对象")
        return payload

    @staticmethod
    def _same_mchid(merchant: dict, mchid) -> None:
        if mchid != merchant["mchid"]:
            raise SimError(400, "PARAM_ERROR", "mchid 与 Authorization 中的商户号不一致")

    def _native(self, merchant: dict, payload: dict) -> Response:
        self._same_mchid(merchant, payload.get("mchid"))
        if payload.get("appid") != merchant["appid"]:
            raise SimError(400, "APPID_MCHID_NOT_MATCH", "商户号与appid不匹配")
        description = _text(payload, "description", max_len=127)
        out_trade_no = _text(payload, "out_trade_no", OUT_TRADE_NO, 32)
        notify_url = _url(payload, "notify_url")
        amount = payload.get("amount")
        if not isinstance(amount, dict):
            raise SimError(400, "PARAM_ERROR", "amount 须为对象")
        total = _fen(amount.get("total"), "amount/total")
        if amount.get("currency", "CNY") != "CNY":
            raise SimError(400, "PARAM_ERROR", "currency 只支持 CNY")
        time_expire = None
        if payload.get("time_expire") is not None:
            raw = payload["time_expire"]
            try:
                time_expire = datetime.fromisoformat(raw) if isinstance(raw, str) and "T" in raw else None
            except ValueError:
                time_expire = None
            if time_expire is None or time_expire.tzinfo is None:
                raise SimError(400, "PARAM_ERROR",
                               f"time_expire 须为 RFC3339 时间（如 2024-05-01T12:00:00+08:00）: {raw!r}")
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is not None:
                if order["mchid"] != merchant["mchid"]:
                    raise SimError(403, "OUT_TRADE_NO_USED", "商户订单号重复")
                if order["state"] in ("SUCCESS", "REFUND"):
                    raise SimError(400, "ORDERPAID", "订单已支付")
                if order["state"] == "CLOSED":
                    raise SimError(400, "ORDER_CLOSED", "订单已关闭")
                if order["amount"] != total:
                    raise SimError(400, "INVALID_REQUEST", "请确认相同单号是否使用了不同的参数")
                order["creates"] += 1
                return self._signed(200, {"code_url": order["code_url"]})
            self.orders[out_trade_no] = {
                "mchid": merchant["mchid"], "appid": merchant["appid"], "out_trade_no": out_trade_no,
                "description": description, "amount": total, "notify_url": notify_url, "time_expire": time_expire,
                "state": "NOTPAY", "transaction_id": None, "success_time": None, "openid": None,
                "code_url": f"weixin://wxpay/bizpayurl?pr={secrets.token_urlsafe(6)}", "created": time.time(),
                "creates": 1, "queries": 0, "closes": 0, "notifications_sent": 0, "notify_answered": False,
            }
            return self._signed(200, {"code_url": self.orders[out_trade_no]["code_url"]})

    def _transaction(self, order: dict) -> dict:
        tx = {"appid": order["appid"], "mchid": order["mchid"], "out_trade_no": order["out_trade_no"],
              "trade_state": order["state"], "trade_state_desc": TRADE_STATE_DESC[order["state"]], "attach": ""}
        if order["transaction_id"]:
            tx.update({"transaction_id": order["transaction_id"], "trade_type": "NATIVE", "bank_type": "OTHERS",
                       "success_time": _rfc3339(order["success_time"]), "payer": {"openid": order["openid"]},
                       "amount": {"total": order["amount"], "payer_total": order["amount"], "currency": "CNY",
                                  "payer_currency": "CNY"}})
        else:
            tx["amount"] = {"total": order["amount"], "currency": "CNY"}
        return tx

    def _order_of(self, merchant: dict, out_trade_no: str) -> dict:
        order = self.orders.get(out_trade_no)
        if order is None or order["mchid"] != merchant["mchid"]:
            raise SimError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def _query(self, merchant: dict, out_trade_no: str, mchid: str) -> Response:
        self._same_mchid(merchant, mchid)
        with self.lock:
            order = self._order_of(merchant, out_trade_no)
            order["queries"] += 1
            return self._signed(200, self._transaction(order))

    def _close(self, merchant: dict, out_trade_no: str, payload: dict) -> Response:
        self._same_mchid(merchant, payload.get("mchid"))
        with self.lock:
            order = self._order_of(merchant, out_trade_no)
            order["closes"] += 1
            if order["state"] in ("SUCCESS", "REFUND"):
                raise SimError(400, "ORDERPAID", "订单已支付")
            order["state"] = "CLOSED"
            return self._signed(204)

    # --- refunds --------------------------------------------------------------------------------------------

    def _refund_view(self, refund: dict) -> dict:
        view = {"refund_id": refund["refund_id"], "out_refund_no": refund["out_refund_no"],
                "transaction_id": refund["transaction_id"], "out_trade_no": refund["out_trade_no"],
                "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
                "create_time": _rfc3339(refund["create_time"]), "status": refund["status"],
                "funds_account": "AVAILABLE",
                "amount": {"total": refund["total"], "refund": refund["amount"], "from": [],
                           "payer_total": refund["total"], "payer_refund": refund["amount"],
                           "settlement_refund": refund["amount"], "settlement_total": refund["total"],
                           "discount_refund": 0, "currency": "CNY"},
                "promotion_detail": []}
        if refund["success_time"] is not None:
            view["success_time"] = _rfc3339(refund["success_time"])
        return view

    def _refund(self, merchant: dict, payload: dict) -> Response:
        out_refund_no = _text(payload, "out_refund_no", OUT_REFUND_NO, 64)
        transaction_id = _text(payload, "transaction_id", max_len=32, required=False)
        out_trade_no = _text(payload, "out_trade_no", OUT_TRADE_NO, 32, required=False)
        if not transaction_id and not out_trade_no:
            raise SimError(400, "PARAM_ERROR", "transaction_id 与 out_trade_no 须二选一")
        reason = _text(payload, "reason", max_len=80, required=False)
        notify_url = _url(payload, "notify_url", required=False)
        amount = payload.get("amount")
        if not isinstance(amount, dict):
            raise SimError(400, "PARAM_ERROR", "amount 须为对象")
        refund_fen = _fen(amount.get("refund"), "amount/refund")
        total = _fen(amount.get("total"), "amount/total")
        if amount.get("currency") != "CNY":
            raise SimError(400, "PARAM_ERROR", "amount.currency 须为 CNY")
        delay, job = 0.0, None
        with self.lock:
            order = None
            if transaction_id:
                order = next((o for o in self.orders.values() if o["transaction_id"] == transaction_id
                              and o["mchid"] == merchant["mchid"]), None)
                if order is not None and out_trade_no and order["out_trade_no"] != out_trade_no:
                    raise SimError(400, "INVALID_REQUEST", "transaction_id 与 out_trade_no 不是同一笔订单")
            else:
                order = self.orders.get(out_trade_no)
                if order is not None and order["mchid"] != merchant["mchid"]:
                    order = None
            if order is None:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
            existing = self.refunds.get(out_refund_no)
            if existing is not None and existing["status"] != "REFUSED":
                existing["requests"] += 1
                if existing["out_trade_no"] != order["out_trade_no"] or existing["amount"] != refund_fen:
                    raise SimError(400, "INVALID_REQUEST", "请确认相同单号是否使用了不同的参数")
                return self._signed(200, self._refund_view(existing))
            if order["state"] not in ("SUCCESS", "REFUND"):
                raise SimError(400, "INVALID_REQUEST", "订单未支付，不能退款")
            if total != order["amount"]:
                raise SimError(400, "INVALID_REQUEST", "amount.total 与原订单金额不一致")
            refunded = sum(r["amount"] for r in self.refunds.values()
                           if r["out_trade_no"] == order["out_trade_no"] and r["status"] != "REFUSED")
            if refunded + refund_fen > order["amount"]:
                raise SimError(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            requests_before = existing["requests"] if existing is not None else 0
            mode = self.behaviour["refund"]
            if mode == "fail":
                self.refunds[out_refund_no] = {
                    "out_refund_no": out_refund_no, "out_trade_no": order["out_trade_no"],
                    "transaction_id": order["transaction_id"], "refund_id": None, "amount": refund_fen,
                    "total": order["amount"], "status": "REFUSED", "requests": requests_before + 1, "queries": 0,
                    "notifications_sent": 0, "mchid": merchant["mchid"]}
                raise SimError(403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起")
            status = {"processing": "PROCESSING", "abnormal": "ABNORMAL"}.get(mode, "SUCCESS")
            now = _now_china()
            refund = {"out_refund_no": out_refund_no, "out_trade_no": order["out_trade_no"],
                      "transaction_id": order["transaction_id"], "refund_id": "50" + _digits(27),
                      "amount": refund_fen, "total": order["amount"], "status": status, "reason": reason,
                      "notify_url": notify_url, "create_time": now,
                      "success_time": now if status == "SUCCESS" else None, "requests": requests_before + 1,
                      "queries": 0, "processing_queries": self.behaviour["refund_processing_queries"],
                      "notifications_sent": 0, "mchid": merchant["mchid"]}
            self.refunds[out_refund_no] = refund
            order["state"] = "REFUND"
            if status in ("SUCCESS", "ABNORMAL"):
                job = self._refund_job(refund)
            if mode == "timeout":
                delay = self.behaviour["refund_timeout_ms"] / 1000
        self._start(job)
        if delay:
            time.sleep(delay)
        with self.lock:
            return self._signed(200, self._refund_view(self.refunds[out_refund_no]))

    def _query_refund(self, merchant: dict, out_refund_no: str) -> Response:
        job = None
        with self.lock:
            refund = self.refunds.get(out_refund_no)
            if refund is None or refund["status"] == "REFUSED" or refund["mchid"] != merchant["mchid"]:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            refund["queries"] += 1
            if refund["status"] == "PROCESSING" and refund["queries"] > refund["processing_queries"]:
                refund["status"], refund["success_time"] = "SUCCESS", _now_china()
                job = self._refund_job(refund)
            response = self._signed(200, self._refund_view(refund))
        self._start(job)
        return response

    # --- notifications --------------------------------------------------------------------------------------

    def _encrypt(self, mchid: str, plain: dict, associated: str) -> dict:
        nonce = secrets.token_hex(6)  # 12 characters, as WeChat sends
        key = self.merchants[mchid]["api_v3_key"].encode()
        data = json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode()
        ciphertext = AESGCM(key).encrypt(nonce.encode(), data, associated.encode())
        return {"original_type": associated, "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": associated, "nonce": nonce}

    def _job(self, mchid: str, url: str, event_type: str, summary: str, plain: dict, associated: str,
             duplicates: int, **refs) -> dict:
        envelope = {"id": str(uuid.uuid4()), "create_time": _rfc3339(_now_china()),
                    "resource_type": "encrypt-resource", "event_type": event_type, "summary": summary,
                    "resource": self._encrypt(mchid, plain, associated)}
        job = {"id": envelope["id"], "event_type": event_type, "url": url,
               "body": json.dumps(envelope, ensure_ascii=False, separators=(",", ":")),
               "mode": self.behaviour["notify_mode"], "duplicates": duplicates, "attempts": 0, "answers": [],
               "answered": False, "generation": self.generation, "out_trade_no": refs.get("out_trade_no"),
               "out_refund_no": refs.get("out_refund_no")}
        self.notifications.append(job)
        return job

    def _refund_job(self, refund: dict) -> dict | None:
        if not refund.get("notify_url") or self.behaviour["notify"] != "send":
            return None
        status = refund["status"]
        plain = {"mchid": refund["mchid"], "transaction_id": refund["transaction_id"],
                 "out_trade_no": refund["out_trade_no"], "refund_id": refund["refund_id"],
                 "out_refund_no": refund["out_refund_no"], "refund_status": status,
                 "user_received_account": "支付用户零钱",
                 "amount": {"total": refund["total"], "refund": refund["amount"], "payer_total": refund["total"],
                            "payer_refund": refund["amount"]}}
        if refund["success_time"] is not None:
            plain["success_time"] = _rfc3339(refund["success_time"])
        summary = {"SUCCESS": "退款成功", "ABNORMAL": "退款异常", "CLOSED": "退款关闭"}[status]
        return self._job(refund["mchid"], refund["notify_url"], f"REFUND.{status}", summary, plain, "refund",
                         self.behaviour["notify_duplicates"], out_trade_no=refund["out_trade_no"],
                         out_refund_no=refund["out_refund_no"])

    def _start(self, job: dict | None) -> None:
        if job is not None:
            threading.Thread(target=self._deliver, args=(job,), daemon=True).start()

    def _deliver(self, job: dict) -> None:
        for delay in NOTIFY_DELAYS:
            if delay:
                time.sleep(delay)
            if job["generation"] != self.generation:
                return
            if self._post(job):
                break
        for _ in range(job["duplicates"]):
            if job["generation"] != self.generation:
                return
            self._post(job)

    def _post(self, job: dict) -> bool:
        body = job["body"]
        if job["mode"] == "stale":
            headers = self._sign_headers(body, ts=int(time.time()) - 400)
        elif job["mode"] == "unknown_serial":
            headers = self._sign_headers(body, serial="UNKNOWN" + secrets.token_hex(8).upper(),
                                         private_pem=self._stranger())
        else:
            headers = self._sign_headers(body)
        if job["mode"] == "tampered":
            envelope = json.loads(body)
            envelope["summary"] = envelope["summary"] + " "
            body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
        headers.pop("Request-ID", None)
        headers["Content-Type"] = "application/json"
        with self.lock:
            job["attempts"] += 1
            if job["out_refund_no"] is None and job["out_trade_no"] in self.orders:
                self.orders[job["out_trade_no"]]["notifications_sent"] += 1
            elif job["out_refund_no"] in self.refunds:
                self.refunds[job["out_refund_no"]]["notifications_sent"] += 1
        try:
            with requests.Session() as session:
                session.trust_env = False
                status = session.post(job["url"], data=body.encode(), headers=headers,
                                      timeout=NOTIFY_TIMEOUT_SECONDS, allow_redirects=False).status_code
        except requests.RequestException:
            status = None
        received = status in (200, 204)
        with self.lock:
            job["answers"].append(status)
            if received:
                job["answered"] = True
                if job["out_refund_no"] is None and job["out_trade_no"] in self.orders:
                    self.orders[job["out_trade_no"]]["notify_answered"] = True
        return received

    # --- bills ----------------------------------------------------------------------------------------------

    def _tradebill(self, merchant: dict, args, host_url: str) -> Response:
        raw_date = args.get("bill_date", "")
        try:
            day = date.fromisoformat(raw_date) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw_date) else None
        except ValueError:
            day = None
        if day is None:
            raise SimError(400, "PARAM_ERROR", f"bill_date 须为 YYYY-MM-DD: {raw_date!r}")
        if day > _now_china().date():
            raise SimError(400, "INVALID_REQUEST", "bill_date 不能晚于今天")
        bill_type = args.get("bill_type", "ALL")
        if bill_type not in ("ALL", "SUCCESS", "REFUND"):
            raise SimError(400, "PARAM_ERROR", f"bill_type 须为 ALL/SUCCESS/REFUND: {bill_type!r}")
        tar_type = args.get("tar_type")
        if tar_type not in (None, "GZIP"):
            raise SimError(400, "PARAM_ERROR", f"tar_type 只能是 GZIP: {tar_type!r}")
        with self.lock:
            content = self._bill_text(merchant, day, bill_type)
            if content is None:
                raise SimError(400, "NO_STATEMENT_EXIST", "账单文件不存在")
            if tar_type == "GZIP":
                content = gzip.compress(content, mtime=0)
            served = content
            if self.behaviour["bill_corrupt"]:
                served = content.replace(b"`", b"'", 1) if b"`" in content else content + b" "
            token = secrets.token_urlsafe(24)
            self.bills = {t: b for t, b in self.bills.items() if b["expires"] > time.time()}
            self.bills[token] = {"content": served, "expires": time.time() + BILL_URL_SECONDS,
                                 "mchid": merchant["mchid"]}
        return self._signed(200, {"hash_type": "SHA1", "hash_value": hashlib.sha1(content).hexdigest(),
                                  "download_url": f"{host_url.rstrip('/')}/v3/billdownload/file?token={token}"})

    def _bill_file(self, merchant: dict, token: str) -> Response:
        with self.lock:
            bill = self.bills.get(token)
            if bill is None or bill["expires"] < time.time():
                raise SimError(400, "INVALID_REQUEST", "请按第一步申请账单的API指引，重新获取账单地址后再请求")
            if bill["mchid"] != merchant["mchid"]:
                raise SimError(403, "NO_AUTH", "请检查本次请求的商户是否与第一步申请账单API的请求商户一致")
            content = bill["content"]
        return Response(content, status=200, mimetype="application/octet-stream")

    def _bill_text(self, merchant: dict, day: date, bill_type: str) -> bytes | None:
        """The bill of one China day, or None when it has no line. Call with the lock held."""
        mchid, appid = merchant["mchid"], merchant["appid"]
        rows: list[tuple[datetime, list[str], dict]] = []

        def payment(moment, trade_no, order_no, openid, name, fen):
            fee = _fee_fen(fen)
            cells = [moment.strftime("%Y-%m-%d %H:%M:%S"), appid, mchid, "0", "", trade_no, order_no, openid,
                     "NATIVE", "SUCCESS", "OTHERS", "CNY", _yuan(fen), "0.00", "0", "0", "0.00", "0.00", "", "",
                     name, "", f"{_yuan(fee)}000", "0.60%", _yuan(fen), "0.00", ""]
            rows.append((moment, cells, {"settle": fen, "refund": 0, "fee": fee, "order": fen, "apply": 0}))

        if bill_type in ("ALL", "SUCCESS"):
            for order in self.orders.values():
                if order["mchid"] != mchid or order["transaction_id"] is None \
                        or order["success_time"].astimezone(CHINA).date() != day:
                    continue
                plant = self.plants.get(order["out_trade_no"])
                fen = plant["amount"] if plant else order["amount"]
                payment(order["success_time"].astimezone(CHINA), order["transaction_id"], order["out_trade_no"],
                        order["openid"], order["description"], fen)
            for no, plant in self.plants.items():
                if no not in self.orders and plant["at"].date() == day:
                    payment(plant["at"], plant["trade_no"], no, "o-planted-line", "planted", plant["amount"])
        if bill_type in ("ALL", "REFUND"):
            for refund in self.refunds.values():
                if refund["mchid"] != mchid or refund["status"] != "SUCCESS" \
                        or refund["success_time"].astimezone(CHINA).date() != day:
                    continue
                order = self.orders[refund["out_trade_no"]]
                moment, fen = refund["success_time"].astimezone(CHINA), refund["amount"]
                fee = _fee_fen(fen)
                cells = [moment.strftime("%Y-%m-%d %H:%M:%S"), appid, mchid, "0", "", refund["transaction_id"],
                         refund["out_trade_no"], order["openid"], "NATIVE", "REFUND", "OTHERS", "CNY", "0.00",
                         "0.00", refund["refund_id"], refund["out_refund_no"], _yuan(fen), "0.00", "ORIGINAL",
                         "SUCCESS", order["description"], "", f"{_yuan(-fee)}000", "0.60%", "0.00", _yuan(fen), ""]
                rows.append((moment, cells, {"settle": 0, "refund": fen, "fee": -fee, "order": 0, "apply": fen}))
        if not rows:
            return None
        rows.sort(key=lambda r: r[0])
        sums = {k: sum(r[2][k] for r in rows) for k in ("settle", "refund", "fee", "order", "apply")}
        lines = [BILL_HEADER]
        lines += [",".join("`" + c.replace(",", "，") for c in cells) for _, cells, _ in rows]
        lines.append(BILL_SUMMARY_HEADER)
        lines.append(",".join("`" + c for c in (str(len(rows)), _yuan(sums["settle"]), _yuan(sums["refund"]),
                                                 "0.00", f"{_yuan(sums['fee'])}000", _yuan(sums["order"]),
                                                 _yuan(sums["apply"]))))
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    # --- control API ----------------------------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method == "POST" and path.startswith("/_sim/pay/"):
            return self._pay(unquote(path[len("/_sim/pay/"):]), self._control_body(request))
        handlers = {
            ("POST", "/_sim/merchant"): lambda: self._register(self._control_body(request)),
            ("GET", "/_sim/keys"): lambda: _json({"platform_serial": self.platform_serial,
                                                  "platform_public_key": self.platform_public}),
            ("GET", "/_sim/orders"): self._orders_view,
            ("GET", "/_sim/refunds"): self._refunds_view,
            ("GET", "/_sim/notifications"): self._notifications_view,
            ("GET", "/_sim/behaviour"): lambda: _json(dict(self.behaviour)),
            ("POST", "/_sim/behaviour"): lambda: self._behave(self._control_body(request)),
            ("POST", "/_sim/bill/plant"): lambda: self._plant(self._control_body(request)),
            ("POST", "/_sim/reset"): self._reset,
        }
        handler = handlers.get((method, path))
        if handler is None:
            return _json({"error": "not found"}, 404)
        try:
            return handler()
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)

    @staticmethod
    def _control_body(request: Request) -> dict:
        raw = request.get_data()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise ValueError("body is not JSON") from None
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return data

    def _register(self, data: dict) -> Response:
        for name in ("mchid", "appid", "serial_no", "public_key", "api_v3_key"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"{name} is required")
        if len(data["api_v3_key"].encode()) != 32:
            raise ValueError("api_v3_key must be 32 bytes")
        try:
            serialization.load_pem_public_key(data["public_key"].encode())
        except (ValueError, TypeError):
            raise ValueError("public_key is not a PEM public key") from None
        with self.lock:
            self.merchants[data["mchid"]] = {k: data[k] for k in ("mchid", "appid", "serial_no", "public_key",
                                                                  "api_v3_key")}
        return _json({"mchid": data["mchid"], "appid": data["appid"], "serial_no": data["serial_no"]})

    def _pay(self, out_trade_no: str, data: dict) -> Response:
        notify = data.get("notify", self.behaviour["notify"])
        duplicates = data.get("duplicates", self.behaviour["notify_duplicates"])
        if notify not in ("send", "drop"):
            raise ValueError("notify must be send or drop")
        if isinstance(duplicates, bool) or not isinstance(duplicates, int) or not 0 <= duplicates <= 10:
            raise ValueError("duplicates must be an integer 0..10")
        job = None
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                return _json({"error": "unknown order"}, 404)
            if order["state"] != "NOTPAY":
                return _json({"error": f"order is {order['state']}"}, 409)
            if order["time_expire"] is not None and datetime.now(UTC) > order["time_expire"]:
                return _json({"error": "order expired (time_expire passed)"}, 409)
            now = _now_china()
            order.update(state="SUCCESS", success_time=now, openid="o" + secrets.token_urlsafe(20),
                         transaction_id="4200" + now.strftime("%Y%m%d") + _digits(16))
            if notify == "send":
                job = self._job(order["mchid"], order["notify_url"], "TRANSACTION.SUCCESS", "支付成功",
                                self._transaction(order), "transaction", duplicates,
                                out_trade_no=out_trade_no)
            answer = {"out_trade_no": out_trade_no, "trade_no": order["transaction_id"], "amount": order["amount"],
                      "notify_status": "queued" if job else "dropped"}
        self._start(job)
        return _json(answer)

    def _behave(self, data: dict) -> Response:
        unknown = set(data) - set(DEFAULT_BEHAVIOUR)
        if unknown:
            raise ValueError(f"unknown behaviour keys: {', '.join(sorted(unknown))}")
        checks = {
            "notify": lambda v: v in ("send", "drop"),
            "notify_duplicates": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10,
            "notify_mode": lambda v: v in NOTIFY_MODES,
            "refund": lambda v: v in REFUND_MODES,
            "refund_timeout_ms": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 120_000,
            "refund_processing_queries": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100,
            "bill_corrupt": lambda v: isinstance(v, bool),
        }
        for key, value in data.items():
            if not checks[key](value):
                raise ValueError(f"bad value for {key}: {value!r}")
        with self.lock:
            self.behaviour.update(data)
            return _json(dict(self.behaviour))

    def _plant(self, data: dict) -> Response:
        no, amount = data.get("out_trade_no"), data.get("amount")
        if not isinstance(no, str) or not no:
            raise ValueError("out_trade_no is required")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError("amount must be an integer number of fen")
        now = _now_china()
        with self.lock:
            self.plants[no] = {"amount": amount, "at": now, "trade_no": "4200" + now.strftime("%Y%m%d") + _digits(16)}
            return _json({"out_trade_no": no, "amount": amount, "known": no in self.orders})

    def _reset(self) -> Response:
        with self.lock:
            self._reset_state()
        return _json({"reset": True})

    def _orders_view(self) -> Response:
        with self.lock:
            return _json([{"out_trade_no": o["out_trade_no"], "trade_no": o["transaction_id"], "amount": o["amount"],
                           "state": o["state"], "notify_url": o["notify_url"],
                           "notifications_sent": o["notifications_sent"], "queries": o["queries"],
                           "closes": o["closes"], "notify_answered": o["notify_answered"], "mchid": o["mchid"],
                           "time_expire": _rfc3339(o["time_expire"]) if o["time_expire"] else None}
                          for o in self.orders.values()])

    def _refunds_view(self) -> Response:
        with self.lock:
            return _json([{"out_trade_no": r["out_trade_no"], "out_refund_no": r["out_refund_no"],
                           "amount": r["amount"], "status": r["status"], "requests": r["requests"],
                           "trade_no": r["transaction_id"], "refund_id": r["refund_id"], "queries": r["queries"],
                           "notifications_sent": r["notifications_sent"]}
                          for r in self.refunds.values()])

    def _notifications_view(self) -> Response:
        with self.lock:
            return _json([{k: copy.deepcopy(j[k]) for k in ("id", "event_type", "out_trade_no", "out_refund_no",
                                                             "attempts", "answers", "answered", "mode")}
                          for j in self.notifications])


def merchant_settings(url: str) -> dict:
    """New merchant keys (RSA 2048, a certificate serial, an APIv3 key), registered with the simulator at `url`;
    returns the wechatpay channel settings pointing at it."""
    url = url.rstrip("/")
    private, public = _keypair()
    settings = {"appid": "wx" + secrets.token_hex(8), "mchid": "19" + _digits(8),
                "serial_no": secrets.token_hex(20).upper(), "private_key": private,
                "api_v3_key": secrets.token_hex(16), "api_base": url}
    with requests.Session() as session:
        session.trust_env = False
        r = session.post(f"{url}/_sim/merchant", json={"mchid": settings["mchid"], "appid": settings["appid"],
                                                       "serial_no": settings["serial_no"], "public_key": public,
                                                       "api_v3_key": settings["api_v3_key"]}, timeout=10)
        r.raise_for_status()
        keys = session.get(f"{url}/_sim/keys", timeout=10)
        keys.raise_for_status()
    keys = keys.json()
    settings["platform_keys"] = {keys["platform_serial"]: keys["platform_public_key"]}
    return settings

"""A UnionPay 全渠道 online gateway (5.1.0) simulator: plain WSGI, thread-safe, for the demo and the tests.

It stands in for both UnionPay hosts (point the settings' `gateway` and `file_gateway` at it) and speaks the
protocol documented in app.payments.channels.unionpay, at the real paths:

- `POST /gateway/api/frontTransReq.do`: the buyer's browser posts the signed consume form (txnType 01/01,
  bizType 000201). Verified, recorded, answered with a small HTML cashier page whose 付款 button
  (`POST /_sim/cashier/<orderId>/pay`) pays it exactly like `/_sim/pay` does and then posts the signed front
  notification to frontUrl from the browser (an auto-submitting form). A refused request gets an HTML error page
  (HTTP 400) showing `respCode=NN`. A consume repeating an orderId + txnTime already seen, or naming an order
  already paid, is refused with 12 重复交易; a new txnTime for an unpaid orderId replaces that order's attempt.
- `POST /gateway/api/backTransReq.do`: refunds (txnType 04/00, bizType 000201, origQryId = the consume's queryId).
  Idempotent per orderId (out_refund_no): a repeat is answered 12 重复交易 and refunds nothing more. Refunds over
  the refundable amount: 36 (code unconfirmed); an unknown or unpaid origQryId: 35. Other back txnTypes: 32.
- `POST /gateway/api/queryTrans.do` (00/00, bizType 000000, orderId + txnTime of the original): respCode 00 with
  the original's txnType and origRespCode (00 paid/refund done; 05 unpaid or in progress; 01 consume expired
  unpaid; 63 refund abnormal), 34 查无此交易 for anything unknown (including refunds refused synchronously).
- `POST /` (the file host's root): fileTransfer (76/01, bizType 000000, fileType 00, settleDate MMDD = the most
  recent such day in Beijing): 98 文件不存在 when the day has no line; else fileName `<merId>_<yyyyMMdd>.zip` and
  fileContent = base64(zlib(zip)) holding `INN<yyMMdd>88ZM_<merId>` (GBK, fixed width, the ZM layout; one line per
  paid consume of that Beijing day and per refund completed that day; 交易代码 S22/S30 are unconfirmed guesses;
  二级商户简称 carries Chinese so the byte widths matter) and an empty `INN<yyMMdd>88ZME_<merId>`.

Every request must carry version 5.1.0, signMethod 01, encoding utf-8, accessType 0, a registered merId whose
certificate serial is certId, and a valid signature (else 11 验证签名失败; missing fields 13; bad formats 10:
txnAmt digits only, no leading zero; currencyCode 156; orderId 8-32 letters/digits; txnTime yyyyMMddHHmmss).
Answers and notifications are signed by a signing certificate (CN `041@8310000000000001@中国银联股份有限公司@
00000001`) issued by a middle CA issued by a root CA, all generated at construction; the certificate travels in
`signPubKeyCert`.

Back notifications (form POSTs to backUrl, in a background thread) are resent until answered HTTP 200 or 302:
after 0.2, 0.5, 1, 2 and 2 s (six tries in all). Consumes notify when paid; refunds when they complete (at once
for "success"/"timeout"/"abnormal", on the query that finishes a "processing" one).

Control API (JSON): the common one of app.payments.simulators, plus
- `POST /_sim/merchant` {"mer_id" (15 digits), "cert" (the merchant signing certificate, PEM; any issuer: the
  simulator trusts what is registered)} -> {"mer_id", "cert_id"};
  `GET /_sim/keys` -> {"mer_id" (last registered), "root_cert", "middle_cert", "sign_cert"}.
- `/_sim/behaviour` also takes "notify_mode": "normal" | "tamper_amount" (txnAmt of every back notification is
  changed after signing: an altered message the merchant must refuse; it is resent since it is refused).
- refund "abnormal" (no such status at UnionPay): the refund is accepted (00) and then ends with 63 卡状态不正确
  in its query and notification: the money could not be returned to the card.
- Refund statuses in `/_sim/refunds`: succeeded, processing, failed, abnormal; order states in `/_sim/orders`:
  waiting, paid, refunded (fully), closed (payTimeout passed unpaid). UnionPay has no close, so `closes` stays 0.
  Both lists also carry "notify_status" ("none", "sending", "answered", "unanswered", "dropped"),
  "notifications_sent" and "txn_time"; orders "notify_answers" (the HTTP statuses we got), refunds
  "refund_query_id" (the refund's own queryId; "trade_no" is the consume's).
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import json
import random
import re
import threading
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from cryptography.x509.oid import NameOID
from werkzeug.wrappers import Request, Response

from app.payments.channels.unionpay import (
    BACK_PATH,
    FRONT_PATH,
    ORDER_ID,
    QUERY_PATH,
    UNIONPAY_CN,
    VERSION,
    ZM_FIELD_WIDTHS,
    beijing_now,
    format_answer,
    parse_txn_time,
    rsa_sign,
    signing_digest,
)

FILE_PATH = "/"
RETRY_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 2.0)
NOTIFY_TIMEOUT_SECONDS = 3
DEFAULT_PAY_TIMEOUT = timedelta(hours=24)
DEFAULT_BEHAVIOUR = {"notify": "send", "notify_duplicates": 0, "notify_mode": "normal", "refund": "success",
                     "refund_timeout_ms": 3000, "refund_processing_queries": 2}
REFUND_MODES = ("success", "processing", "timeout", "fail", "abnormal")
OK = "00"
MESSAGES = {
    "00": "成功[0000000]", "01": "交易失败。详情请咨询95516[1000001]", "05": "交易已受理，请稍后查询交易结果[2000005]",
    "10": "报文格式错误[6100010]", "11": "验证签名失败[6100011]", "12": "重复交易[6100012]",
    "13": "报文交易要素缺失[6100013]", "31": "商户状态不正确[6100031]", "32": "无此交易权限[6100032]",
    "34": "查无此交易[2600000]", "35": "原交易不存在或状态不正确[6100035]", "36": "与原交易信息不符[6100036]",
    "39": "交易不在受理时间范围内[6100039]", "63": "卡状态不正确[6100063]", "98": "文件不存在[6100098]",
}


# --- certificates -----------------------------------------------------------------------------------------------

@dataclass
class Issued:
    key: rsa_keys.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()


def new_key() -> rsa_keys.RSAPrivateKey:
    return rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)


def issue(common_name: str, issuer: Issued | None = None, ca: bool = False, days: int = 730,
          organization: str = "CFCA OCA1 (simulated)", serial: int | None = None,
          not_before: datetime | None = None) -> Issued:
    """A certificate for a new key, signed by `issuer` (self-signed when None)."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = not_before or datetime.now(UTC) - timedelta(days=1)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(serial or random.randint(10**10, 10**11 - 1))
               .not_valid_before(start)
               .not_valid_after(start + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    cert = builder.sign((issuer.key if issuer else key), hashes.SHA256())
    return Issued(key, cert)


@dataclass
class Chain:
    root: Issued
    middle: Issued
    sign: Issued


def make_chain(owner: str = UNIONPAY_CN) -> Chain:
    """A root CA, a middle CA and a signing certificate whose CN names `owner` the way UnionPay's do."""
    root = issue("CFCA TEST CS ROOT (simulated)", ca=True, days=3650)
    middle = issue("CFCA TEST OCA1 (simulated)", issuer=root, ca=True, days=3650)
    sign = issue(f"041@8310000000000001@{owner}@00000001", issuer=middle)
    return Chain(root, middle, sign)


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


class UnionPaySimulator:
    """The WSGI app. State in memory behind one lock; nothing slow happens while it is held."""

    def __init__(self):
        self.lock = threading.RLock()
        self.chain = make_chain()
        self.root_cert_pem = self.chain.root.cert_pem
        self.middle_cert_pem = self.chain.middle.cert_pem
        self.sign_cert_pem = self.chain.sign.cert_pem
        self.merchants: dict[str, dict] = {}
        self.mer_id: str | None = None
        self._stop = threading.Event()
        self._counter = itertools.count(1)
        self.generation = 0
        self.reset()

    # --- state ------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.orders: dict[str, dict] = {}
            self.refunds: dict[str, dict] = {}
            self.plants: dict[str, int] = {}
            self.consumes_seen: set[tuple[str, str, str]] = set()
            self.behaviour = dict(DEFAULT_BEHAVIOUR)

    def close(self) -> None:
        """Stop resending notifications (tests call it when they stop the server)."""
        self._stop.set()

    def register_merchant(self, mer_id: str, cert_pem: str) -> dict:
        if not isinstance(mer_id, str) or not re.fullmatch(r"\d{15}", mer_id):
            raise ValueError("mer_id must be 15 digits")
        try:
            cert = x509.load_pem_x509_certificate(str(cert_pem).encode())
        except ValueError:
            raise ValueError("cert must be a PEM certificate") from None
        with self.lock:
            self.merchants[mer_id] = {"cert": cert, "cert_id": str(cert.serial_number)}
            self.mer_id = mer_id
        return {"mer_id": mer_id, "cert_id": str(cert.serial_number)}

    def sign(self, fields: dict) -> dict:
        """Fields signed as UnionPay signs them (signPubKeyCert added)."""
        signed = {k: str(v) for k, v in fields.items() if v not in (None, "") and k != "signature"}
        signed["signPubKeyCert"] = self.sign_cert_pem
        signed["signature"] = rsa_sign(self.chain.sign.key, signing_digest(signed, omit_empty=False))
        return signed

    def _query_id(self, at: datetime) -> str:
        return f"{random.randint(10, 99)}{at:%y%m%d%H%M%S}{next(self._counter) % 10**7:07d}"

    def _trace(self, at: datetime) -> tuple[str, str]:
        return f"{next(self._counter) % 10**6:06d}", f"{at:%m%d%H%M%S}"

    # --- WSGI -------------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method == "POST" and path == FRONT_PATH:
            return self.front(request.form.to_dict())
        if method == "POST" and path == BACK_PATH:
            return self.back(request.form.to_dict())
        if method == "POST" and path == QUERY_PATH:
            return self.query(request.form.to_dict())
        if method == "POST" and path == FILE_PATH:
            return self.file_transfer(request.form.to_dict())
        match = re.fullmatch(r"/_sim/cashier/([0-9A-Za-z]+)(/pay)?", path)
        if match and method == "GET" and not match.group(2):
            return self.cashier_page(match.group(1))
        if match and method == "POST" and match.group(2):
            return self.cashier_pay(match.group(1))
        if path.startswith("/_sim/"):
            return self.control(request)
        return _json({"error": "not found"}, 404)

    # --- checks and answers -----------------------------------------------------------------------------------

    def _check(self, f: dict, txn_type: str, txn_sub_type: str, biz_type: str, required: tuple = ()) -> str | None:
        """None when the request is acceptable, else the respCode refusing it."""
        for name in ("version", "encoding", "signMethod", "txnType", "txnSubType", "bizType", "accessType",
                     "merId", "txnTime", "certId", "signature", *required):
            if not f.get(name):
                return "13"
        if f["version"] != VERSION or f["signMethod"] != "01" or f["encoding"].lower() != "utf-8":
            return "10"
        with self.lock:
            merchant = self.merchants.get(f["merId"])
        if merchant is None:
            return "31"
        if f["certId"] != merchant["cert_id"]:
            return "11"
        try:
            merchant["cert"].public_key().verify(base64.b64decode(f["signature"], validate=True),
                                                 signing_digest(f, omit_empty=False).encode(),
                                                 padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError, TypeError):
            return "11"
        if f["txnType"] != txn_type:
            return "32"
        if f["txnSubType"] != txn_sub_type or f["bizType"] != biz_type or f["accessType"] != "0":
            return "10"
        if parse_txn_time(f["txnTime"]) is None:
            return "10"
        if "orderId" in required and not ORDER_ID.fullmatch(f["orderId"]):
            return "10"
        if "txnAmt" in required and not re.fullmatch(r"[1-9]\d{0,11}", f["txnAmt"]):
            return "10"
        if "currencyCode" in required and f["currencyCode"] != "156":
            return "10"
        return None

    def _answer(self, request: dict, code: str, **extra) -> Response:
        echo = {k: request[k] for k in ("version", "encoding", "bizType", "txnTime", "txnType", "txnSubType",
                                        "accessType", "merId", "orderId", "txnAmt", "currencyCode", "origQryId",
                                        "settleDate", "fileType") if request.get(k)}
        fields = {"version": VERSION, **echo, "signMethod": "01", "respCode": code,
                  "respMsg": MESSAGES.get(code, code), **extra}
        return Response(format_answer(self.sign(fields)), mimetype="text/plain")

    @staticmethod
    def _page(title: str, body: str, status: int = 200) -> Response:
        page = (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{html.escape(title)}'
                f'</title></head><body>{body}</body></html>')
        return Response(page, status=status, mimetype="text/html")

    def _error_page(self, code: str, status: int = 400) -> Response:
        return self._page("银联在线支付 (simulated): error",
                          f'<h1>交易失败</h1><p id="resp">respCode={code} '
                          f'respMsg={html.escape(MESSAGES.get(code, code))}</p>', status)

    # --- the front consume and the cashier --------------------------------------------------------------------

    def front(self, f: dict) -> Response:
        code = self._check(f, "01", "01", "000201", ("orderId", "txnAmt", "currencyCode", "frontUrl", "backUrl",
                                                     "channelType"))
        if code:
            return self._error_page(code)
        sent_at = parse_txn_time(f["txnTime"])
        if f.get("payTimeout"):
            deadline = parse_txn_time(f["payTimeout"])
            if deadline is None:
                return self._error_page("10")
            if deadline <= beijing_now():
                return self._error_page("39")
        else:
            deadline = sent_at + DEFAULT_PAY_TIMEOUT
        key = (f["merId"], f["orderId"], f["txnTime"])
        with self.lock:
            existing = self.orders.get(f["orderId"])
            if key in self.consumes_seen or (existing and (existing["state"] in ("paid", "refunded")
                                                           or existing["mer_id"] != f["merId"])):
                return self._error_page("12")
            self.consumes_seen.add(key)
            order = existing or {"out_trade_no": f["orderId"], "trade_no": None, "notifications_sent": 0,
                                 "queries": 0, "closes": 0, "notify_status": "none", "notify_answers": []}
            order.update(mer_id=f["merId"], txn_time=f["txnTime"], amount=int(f["txnAmt"]),
                         front_url=f["frontUrl"], notify_url=f["backUrl"], pay_timeout=deadline, state="waiting",
                         paid_at=None, trace_no=None, trace_time=None)
            self.orders[f["orderId"]] = order
        return self.cashier_page(f["orderId"])

    def cashier_page(self, out_trade_no: str) -> Response:
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                return self._error_page("34", 404)
            mer_id, amount = order["mer_id"], order["amount"]
        no = html.escape(out_trade_no)
        return self._page("银联在线支付 (simulated)",
                          f"<h1>银联在线支付 · 模拟收银台</h1><p>商户号 {html.escape(mer_id)} · 订单号 {no}</p>"
                          f'<p>金额 ¥<span id="amount">{_yuan(amount)}</span></p>'
                          f'<form method="post" action="/_sim/cashier/{no}/pay">'
                          f'<button type="submit">付款</button></form>')

    def cashier_pay(self, out_trade_no: str) -> Response:
        status, result = self.pay(out_trade_no)
        if status != 200:
            return self._page("银联在线支付 (simulated): error", f"<p>{html.escape(result['error'])}</p>", status)
        with self.lock:
            order = self.orders[out_trade_no]
            fields, front_url = self._consume_notification(order, tamper=False), order["front_url"]
        inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in fields.items())
        return self._page("银联在线支付 (simulated): paid",
                          f'<p>支付成功</p><form id="back" method="post" action="{html.escape(front_url)}">{inputs}'
                          f'<button type="submit">返回商户</button></form>'
                          f'<script>document.getElementById("back").submit();</script>')

    def pay(self, out_trade_no: str, notify: str | None = None, duplicates: int | None = None) -> tuple[int, dict]:
        """The buyer pays (the cashier's button, or /_sim/pay)."""
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                return 404, {"error": f"unknown order {out_trade_no}"}
            now = beijing_now()
            if order["state"] in ("paid", "refunded"):
                return 409, {"error": "already paid"}
            if order["state"] == "closed" or now > order["pay_timeout"]:
                order["state"] = "closed"
                return 409, {"error": "payTimeout has passed: the order can no longer be paid"}
            order.update(state="paid", trade_no=self._query_id(now), paid_at=now)
            order["trace_no"], order["trace_time"] = self._trace(now)
            mode = notify or self.behaviour["notify"]
            copies = self.behaviour["notify_duplicates"] if duplicates is None else duplicates
            fields = self._consume_notification(order, tamper=self.behaviour["notify_mode"] == "tamper_amount")
            order["notify_status"] = "dropped" if mode == "drop" else "sending"
            result = {"out_trade_no": out_trade_no, "trade_no": order["trade_no"], "amount": order["amount"],
                      "notify_status": order["notify_status"]}
        if mode != "drop":
            self._notify_later(order["notify_url"], fields, order, copies)
        return 200, result

    def _consume_notification(self, order: dict, tamper: bool) -> dict:
        fields = self.sign({
            "accessType": "0", "bizType": "000201", "currencyCode": "156", "encoding": "utf-8",
            "merId": order["mer_id"], "orderId": order["out_trade_no"], "queryId": order["trade_no"],
            "respCode": OK, "respMsg": MESSAGES[OK], "settleAmt": order["amount"], "settleCurrencyCode": "156",
            "settleDate": f"{order['paid_at']:%m%d}", "traceNo": order["trace_no"], "traceTime": order["trace_time"],
            "txnAmt": order["amount"], "txnSubType": "01", "txnTime": order["txn_time"], "txnType": "01",
            "version": VERSION, "payType": "0001", "payCardType": "01", "accNo": "6216********0018",
        })
        if tamper:
            fields["txnAmt"] = str(order["amount"] + 1)
        return fields

    # --- notifications ----------------------------------------------------------------------------------------

    def _notify_later(self, url: str, fields: dict, record: dict, copies: int) -> None:
        thread = threading.Thread(target=self._deliver, args=(url, fields, record, copies, self.generation),
                                  daemon=True)
        thread.start()

    def _deliver(self, url: str, fields: dict, record: dict, copies: int, generation: int) -> None:
        session = requests.Session()
        session.trust_env = False

        def post() -> int | None:
            try:
                return session.post(url, data=fields, timeout=NOTIFY_TIMEOUT_SECONDS, allow_redirects=False).status_code
            except requests.RequestException:
                return None

        delivered = False
        for delay in RETRY_DELAYS:
            if self._stop.wait(delay) or generation != self.generation:
                return
            status = post()
            with self.lock:
                record["notifications_sent"] += 1
                record["notify_answers"].append(status)
            if status in (200, 302):  # what UnionPay counts as received
                delivered = True
                break
        with self.lock:
            record["notify_status"] = "answered" if delivered else "unanswered"
        for _ in range(copies):
            if self._stop.wait(0.05) or generation != self.generation:
                return
            status = post()
            with self.lock:
                record["notifications_sent"] += 1
                record["notify_answers"].append(status)

    # --- refunds ----------------------------------------------------------------------------------------------

    def back(self, f: dict) -> Response:
        code = self._check(f, "04", "00", "000201", ("orderId", "txnAmt", "currencyCode", "origQryId", "backUrl"))
        if code:
            return self._answer(f, code)
        delay = 0.0
        with self.lock:
            refund = self.refunds.get(f["orderId"])
            if refund and refund["accepted"]:
                refund["requests"] += 1
                return self._answer(f, "12")
            requests_so_far = refund["requests"] if refund else 0
            order = next((o for o in self.orders.values() if o["trade_no"] == f["origQryId"]
                          and o["mer_id"] == f["merId"]), None)
            amount = int(f["txnAmt"])
            refund = {"out_refund_no": f["orderId"], "out_trade_no": order["out_trade_no"] if order else None,
                      "trade_no": f["origQryId"], "mer_id": f["merId"], "txn_time": f["txnTime"], "amount": amount,
                      "back_url": f["backUrl"], "requests": requests_so_far + 1, "accepted": False,
                      "status": "failed", "query_id": None, "pending_queries": 0, "done_at": None,
                      "trace_no": None, "trace_time": None, "notifications_sent": 0, "notify_status": "none",
                      "notify_answers": []}
            self.refunds[f["orderId"]] = refund
            if order is None or order["state"] not in ("paid", "refunded"):
                return self._answer(f, "35")
            taken = sum(r["amount"] for r in self.refunds.values()
                        if r["accepted"] and r["out_trade_no"] == order["out_trade_no"])
            if taken + amount > order["amount"]:
                return self._answer(f, "36")
            mode = self.behaviour["refund"]
            if mode == "fail":
                return self._answer(f, "01")
            now = beijing_now()
            refund.update(accepted=True, query_id=self._query_id(now))
            refund["trace_no"], refund["trace_time"] = self._trace(now)
            if taken + amount == order["amount"]:
                order["state"] = "refunded"
            if mode == "processing":
                refund.update(status="processing", pending_queries=self.behaviour["refund_processing_queries"])
            else:
                self._finish_refund(refund, "abnormal" if mode == "abnormal" else "succeeded")
            if mode == "timeout":
                delay = self.behaviour["refund_timeout_ms"] / 1000
            answer = self._answer(f, OK, queryId=refund["query_id"])
        if delay:
            self._stop.wait(delay)
        return answer

    def _finish_refund(self, refund: dict, status: str) -> None:
        """Called under the lock: the refund completes and its back notification goes out."""
        refund.update(status=status, done_at=beijing_now())
        code = OK if status == "succeeded" else "63"
        fields = self.sign({
            "accessType": "0", "bizType": "000201", "currencyCode": "156", "encoding": "utf-8",
            "merId": refund["mer_id"], "orderId": refund["out_refund_no"], "origQryId": refund["trade_no"],
            "queryId": refund["query_id"], "respCode": code, "respMsg": MESSAGES[code],
            "settleAmt": refund["amount"], "settleCurrencyCode": "156", "settleDate": f"{refund['done_at']:%m%d}",
            "traceNo": refund["trace_no"], "traceTime": refund["trace_time"], "txnAmt": refund["amount"],
            "txnSubType": "00", "txnTime": refund["txn_time"], "txnType": "04", "version": VERSION,
        })
        if self.behaviour["notify_mode"] == "tamper_amount":
            fields["txnAmt"] = str(refund["amount"] + 1)
        if self.behaviour["notify"] == "drop":
            refund["notify_status"] = "dropped"
            return
        refund["notify_status"] = "sending"
        self._notify_later(refund["back_url"], fields, refund, self.behaviour["notify_duplicates"])

    # --- queries ----------------------------------------------------------------------------------------------

    def query(self, f: dict) -> Response:
        code = self._check(f, "00", "00", "000000", ("orderId",))
        if code:
            return self._answer(f, code)
        base = {k: f[k] for k in ("version", "encoding", "bizType", "accessType", "merId", "orderId", "txnTime")}
        with self.lock:
            order = self.orders.get(f["orderId"])
            if order and order["mer_id"] == f["merId"] and order["txn_time"] == f["txnTime"]:
                order["queries"] += 1
                if order["state"] == "waiting" and beijing_now() > order["pay_timeout"]:
                    order["state"] = "closed"
                paid = order["state"] in ("paid", "refunded")
                orig = OK if paid else ("01" if order["state"] == "closed" else "05")
                extra = {"queryId": order["trade_no"], "settleAmt": order["amount"],
                         "settleDate": f"{order['paid_at']:%m%d}", "traceNo": order["trace_no"],
                         "traceTime": order["trace_time"]} if paid else {}
                return self._answer(base, OK, txnType="01", txnSubType="01", txnAmt=order["amount"],
                                    currencyCode="156", origRespCode=orig, origRespMsg=MESSAGES[orig], **extra)
            refund = self.refunds.get(f["orderId"])
            if refund and refund["accepted"] and refund["mer_id"] == f["merId"] \
                    and refund["txn_time"] == f["txnTime"]:
                if refund["status"] == "processing":
                    if refund["pending_queries"] > 0:
                        refund["pending_queries"] -= 1
                    else:
                        self._finish_refund(refund, "succeeded")
                orig = {"succeeded": OK, "processing": "05"}.get(refund["status"], "63")
                return self._answer(base, OK, txnType="04", txnSubType="00", txnAmt=refund["amount"],
                                    currencyCode="156", origQryId=refund["trade_no"], queryId=refund["query_id"],
                                    origRespCode=orig, origRespMsg=MESSAGES[orig])
        return self._answer(f, "34")

    # --- the bill ---------------------------------------------------------------------------------------------

    def file_transfer(self, f: dict) -> Response:
        code = self._check(f, "76", "01", "000000", ("settleDate", "fileType"))
        if code:
            return self._answer(f, code)
        if f["fileType"] != "00" or not re.fullmatch(r"\d{4}", f["settleDate"]):
            return self._answer(f, "10")
        day = _recent_day(f["settleDate"])
        if day is None:
            return self._answer(f, "10")
        with self.lock:
            lines = self._bill_lines(f["merId"], day)
        if not lines:
            return self._answer(f, "98")
        zm = b"".join(line + b"\r\n" for line in lines)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"INN{day:%y%m%d}88ZM_{f['merId']}", zm)
            archive.writestr(f"INN{day:%y%m%d}88ZME_{f['merId']}", b"")
        content = base64.b64encode(zlib.compress(buffer.getvalue())).decode()
        return self._answer(f, OK, fileName=f"{f['merId']}_{day:%Y%m%d}.zip", fileContent=content)

    def _bill_lines(self, mer_id: str, day: date) -> list[bytes]:
        lines, today = [], beijing_now().date()
        planted = dict(self.plants)
        for order in self.orders.values():
            if order["mer_id"] != mer_id:
                continue
            paid = order["state"] in ("paid", "refunded")
            if paid and order["paid_at"].date() == day:
                lines.append(self._zm_payment(order, planted.pop(order["out_trade_no"], order["amount"])))
            elif paid:
                planted.pop(order["out_trade_no"], None)
        for refund in self.refunds.values():
            if refund["mer_id"] == mer_id and refund["status"] == "succeeded" and refund["done_at"].date() == day:
                lines.append(self._zm_refund(refund))
        if day == today:  # planted lines for orders never paid here: extra paid lines of today
            now = beijing_now()
            for no, amount in planted.items():
                trace_no, trace_time = self._trace(now)
                lines.append(self._zm_payment({"out_trade_no": no, "trade_no": self._query_id(now),
                                               "mer_id": mer_id, "trace_no": trace_no, "trace_time": trace_time},
                                              amount))
        return lines

    @staticmethod
    def _zm_payment(order: dict, amount: int) -> bytes:
        return zm_line({1: "S22", 4: order["trace_no"], 5: order["trace_time"], 7: f"{amount:012d}",
                        10: order["trade_no"], 12: order["out_trade_no"], 17: f"C{amount:012d}", 20: "01",
                        21: "01", 28: order["mer_id"], 33: f"C{amount:012d}", 42: f"C{amount:012d}"})

    def _zm_refund(self, refund: dict) -> bytes:
        order = self.orders.get(refund["out_trade_no"]) or {}
        amount = refund["amount"]
        return zm_line({1: "S30", 4: refund["trace_no"], 5: refund["trace_time"], 7: f"{amount:012d}",
                        10: refund["query_id"], 12: refund["out_refund_no"], 14: order.get("trace_no") or "",
                        15: order.get("trace_time") or "", 17: f"D{amount:012d}", 20: "04", 21: "00",
                        27: refund["trade_no"], 28: refund["mer_id"], 33: f"D{amount:012d}",
                        41: refund["out_trade_no"] or "", 42: f"D{amount:012d}"})

    # --- control API ------------------------------------------------------------------------------------------

    def control(self, request: Request) -> Response:
        path, method = request.path, request.method
        body = {}
        if method == "POST" and request.get_data():
            try:
                body = json.loads(request.get_data())
            except ValueError:
                return _json({"error": "bad json"}, 400)
            if not isinstance(body, dict):
                return _json({"error": "the body must be a JSON object"}, 400)
        if path == "/_sim/merchant" and method == "POST":
            try:
                return _json(self.register_merchant(body.get("mer_id"), body.get("cert")))
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
        if path == "/_sim/keys" and method == "GET":
            return _json({"mer_id": self.mer_id, "root_cert": self.root_cert_pem,
                          "middle_cert": self.middle_cert_pem, "sign_cert": self.sign_cert_pem})
        if path.startswith("/_sim/pay/") and method == "POST":
            notify, duplicates = body.get("notify"), body.get("duplicates")
            if notify not in (None, "send", "drop"):
                return _json({"error": "notify must be send or drop"}, 400)
            if duplicates is not None and (isinstance(duplicates, bool) or not isinstance(duplicates, int)
                                           or not 0 <= duplicates <= 10):
                return _json({"error": "duplicates must be an integer 0..10"}, 400)
            status, result = self.pay(path[len("/_sim/pay/"):], notify, duplicates)
            return _json(result, status)
        if path == "/_sim/refunds" and method == "GET":
            with self.lock:
                return _json([{"out_trade_no": r["out_trade_no"], "out_refund_no": r["out_refund_no"],
                               "amount": r["amount"], "status": r["status"], "requests": r["requests"],
                               "trade_no": r["trade_no"], "refund_query_id": r["query_id"],
                               "txn_time": r["txn_time"], "notifications_sent": r["notifications_sent"],
                               "notify_status": r["notify_status"]} for r in self.refunds.values()])
        if path == "/_sim/orders" and method == "GET":
            with self.lock:
                return _json([{"out_trade_no": o["out_trade_no"], "trade_no": o["trade_no"], "amount": o["amount"],
                               "state": o["state"], "notify_url": o["notify_url"], "txn_time": o["txn_time"],
                               "notifications_sent": o["notifications_sent"], "notify_status": o["notify_status"],
                               "notify_answers": list(o["notify_answers"]), "queries": o["queries"],
                               "closes": o["closes"]} for o in self.orders.values()])
        if path == "/_sim/behaviour" and method in ("GET", "POST"):
            if method == "POST":
                error = self.set_behaviour(body)
                if error:
                    return _json({"error": error}, 400)
            with self.lock:
                return _json(dict(self.behaviour))
        if path == "/_sim/bill/plant" and method == "POST":
            no, amount = body.get("out_trade_no"), body.get("amount")
            if not isinstance(no, str) or not no or isinstance(amount, bool) or not isinstance(amount, int) \
                    or amount < 0:
                return _json({"error": "out_trade_no (string) and amount (fen, integer >= 0) are required"}, 400)
            with self.lock:
                self.plants[no] = amount
            return _json({"out_trade_no": no, "amount": amount})
        if path == "/_sim/reset" and method == "POST":
            self.reset()
            return _json({"reset": True})
        return _json({"error": "not found"}, 404)

    def set_behaviour(self, data: dict) -> str | None:
        unknown = set(data) - set(DEFAULT_BEHAVIOUR)
        if unknown:
            return f"unknown behaviour key(s): {', '.join(sorted(unknown))}"
        if data.get("notify", "send") not in ("send", "drop"):
            return "notify must be send or drop"
        if data.get("notify_mode", "normal") not in ("normal", "tamper_amount"):
            return "notify_mode must be normal or tamper_amount"
        if data.get("refund", "success") not in REFUND_MODES:
            return f"refund must be one of {', '.join(REFUND_MODES)}"
        for key in ("notify_duplicates", "refund_timeout_ms", "refund_processing_queries"):
            if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int)
                                or not 0 <= data[key] <= 600_000):
                return f"{key} must be an integer 0..600000"
        with self.lock:
            self.behaviour.update(data)
        return None


def zm_line(values: dict[int, str]) -> bytes:
    """One INN..ZM_ line: every field GBK, left-aligned, space-padded to its width, one space between fields."""
    parts = []
    for number, width in enumerate(ZM_FIELD_WIDTHS, start=1):
        value = values.get(number, _ZM_DEFAULTS.get(number, ""))
        parts.append(value.encode("gbk")[:width].ljust(width, b" "))
    return b" ".join(parts)


_ZM_DEFAULTS = {2: "00010344", 3: "00010344", 6: "6216********0018", 8: "5399", 9: "07", 11: "00", 13: "01",
                16: f"D{0:012d}", 18: "0001", 22: "000201", 23: "01", 31: "卡盟模拟商户", 32: f"{0:013d}",
                36: f"{0:013d}", 37: f"{0:013d}", 38: f"{0:012d}", 39: "00"}


def _recent_day(mmdd: str) -> date | None:
    """The most recent Beijing day (today included) whose month and day are MMDD."""
    today = beijing_now().date()
    for year in (today.year, today.year - 1, today.year - 2):
        try:
            day = date(year, int(mmdd[:2]), int(mmdd[2:]))
        except ValueError:
            continue
        if day <= today:
            return day
    return None


def merchant_settings(url: str) -> dict:
    """A new merchant key and self-made signing certificate, registered with the simulator at `url`; the complete
    settings of the unionpay channel, pointing both hosts at the simulator."""
    url = url.rstrip("/")
    mer_id = "777290058" + f"{random.randint(0, 999_999):06d}"
    merchant = issue(f"041@Z12@{mer_id}@00000001", organization="Kameng merchant (simulated)")
    session = requests.Session()
    session.trust_env = False
    registered = session.post(f"{url}/_sim/merchant", json={"mer_id": mer_id, "cert": merchant.cert_pem}, timeout=10)
    registered.raise_for_status()
    keys = session.get(f"{url}/_sim/keys", timeout=10)
    keys.raise_for_status()
    keys = keys.json()
    return {"mer_id": mer_id, "private_key": merchant.key_pem, "sign_cert": merchant.cert_pem,
            "root_cert": keys["root_cert"], "middle_cert": keys["middle_cert"], "gateway": url, "file_gateway": url}


__all__ = ["UnionPaySimulator", "merchant_settings", "make_chain", "issue", "zm_line"]

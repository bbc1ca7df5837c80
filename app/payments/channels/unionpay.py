"""UnionPay 全渠道 online gateway (网关支付, version 5.1.0, signMethod 01 = RSA with certificates).

Protocol, as published in UnionPay's own SDK demos and the SDKs built from them (PROTOCOLS.md section 3):

- Hosts (production): `https://gateway.95516.com/gateway/api/{frontTransReq,backTransReq,queryTrans}.do` and the
  file transfer at `https://filedownload.95516.com/` (POST to the root path). Confirmed from the production
  SDKConfig.php shipped with UnionPay's demos (hectorqin/lpays `src/libs/upacp_apple_pay/assets/生产环境配置文件/
  SDKConfig.php`: SDK_SINGLE_QUERY_URL, SDK_FILE_QUERY_URL; the same values in alucard263096/AMK).
- Every message is a flat form of string fields. Signing (ours): every non-empty field but `signature`, sorted by
  name, joined `k=v&` unencoded; the lowercase hex SHA-256 of that string is signed with SHA256withRSA (PKCS#1
  v1.5) by the merchant key; `signature` = base64 of it; `certId` = the merchant signing certificate's serial in
  decimal [U2 Xuchengen/X-UnionPay V510Signer]. Verifying (theirs): the message carries its PEM certificate in
  `signPubKeyCert`; it must be inside its validity dates, issued by the configured middle CA which is issued by
  the configured root CA, and the third '@'-separated part of its subject CN must be 中国银联股份有限公司 (a real
  certificate's CN reads `041@8310000000083040@中国银联股份有限公司@00016494`, decoded from a test answer kept in
  yansongda/pay's tests); then `signature` is checked over the hex SHA-256 of every field but `signature` (the SDK's
  getIdentitiesFromCertficate / verifyCertificateChain, e.g. Javen205/IJPay CertUtil.java).
- Synchronous answers are `k=v&k=v` text, NOT URL-encoded (values may hold `=`, newlines, or `{..&..}` groups);
  they are parsed the way the SDK's parseQString does.
- respCode: 00 success (for back transactions: accepted), 03/04/05 unknown (query later), 12 重复交易 (a repeated
  orderId + txnTime), 34 查无此交易, 98 文件不存在 (no bill), 11 验证签名失败, anything else failed (the SDK's
  response code table, e.g. jframe ResponseCode.java; 34 in the demos' unit tests "respCode=34&respMsg=查无此交易").
  A query answers respCode 00 plus origRespCode: 00 (or A6) paid, 03/04/05 still in progress [U1 Form_6_5_Query].
- The back notification is a form POST to backUrl; UnionPay counts HTTP 200 (or 302) as received and resends
  otherwise, up to five sends within minutes (comments in several SDK wrappers: "商户返回码为200或302时，银联判定为
  通知成功"). We answer 200 "ok" like UnionPay's Java demo.
- Reconciliation: fileTransfer txnType 76 with settleDate MMDD; respCode 98 = no file; `fileContent` =
  base64(zlib(zip)) and `fileName`; the zip holds the GBK fixed-width transaction file whose name starts `INN` and
  carries `ZM_` at offset 11 (U1 Form_6_6_FileTransfer.php), fields separated by one space, widths as in
  ZM_FIELD_WIDTHS below (liao47/hodgepodge-utils unionpay-sdk BillParser.java; the first 41 agree with the PHP
  demo): field 7 交易金额 (fen), 10 查询流水号 (queryId), 12 商户订单号, 20 交易类型, 27 原交易查询流水号,
  41 原始交易订单号.

Unconfirmed (chosen and documented): whether empty values are omitted when signing (we omit them, as the SDK's
filterBlank does before signing; verification covers every received field, as the SDK's coverMap2String does);
the 交易代码 values in the bill; the respCode of a refund over the refundable amount.

Our choices on top of the protocol:
- create_payment returns the signed consume form; PaymentStart.meta = {"txnTime", "payTimeout"} (both needed:
  a query names the order by orderId + txnTime, and a failed attempt only becomes "closed" after payTimeout).
- UnionPay has no close for a front consume: payTimeout (our expires_at) makes the order unpayable. close_payment
  therefore queries: False when paid, True otherwise.
- A refund (txnType 04) gets orderId = out_refund_no and its own txnTime, which refund() returns as
  RefundResult.meta["refund_txnTime"] (and attaches to a ChannelUnavailable it raises, as `exc.meta`): a retry must
  pass it back in RefundRequest.meta so it is the same request (the gateway answers 12 重复交易 and refunds once);
  query_refund needs it too. respCode 00 = accepted -> "processing"; the result comes by query or notification.
  A refund accepted and then finished with a failure code means the issuer would not take the money back:
  "abnormal" (staff), not "failed". query_refund never answers "failed": a refund it cannot find (34) or cannot
  name (no refund_txnTime) stays "processing" / ChannelUnavailable, since money may have moved.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import io
import re
import zipfile
import zlib
from datetime import UTC, date, datetime, timedelta, timezone
from urllib.parse import parse_qsl

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from app import outbound
from app.payments.channels.base import (
    HTTP_TIMEOUT_SECONDS,
    STATEMENT_DEADLINE_SECONDS,
    STATEMENT_MAX_BYTES,
    BadNotification,
    ChannelError,
    ChannelUnavailable,
    Notification,
    NotificationAnswer,
    PaymentRequest,
    PaymentStart,
    RefundNotice,
    RefundRequest,
    RefundResult,
    StatementLine,
    TradeStatus,
)

DEFAULT_GATEWAY = "https://gateway.95516.com"
DEFAULT_FILE_GATEWAY = "https://filedownload.95516.com"
FRONT_PATH = "/gateway/api/frontTransReq.do"
BACK_PATH = "/gateway/api/backTransReq.do"
QUERY_PATH = "/gateway/api/queryTrans.do"
FILE_PATH = "/"

VERSION = "5.1.0"
SIGN_METHOD = "01"
CURRENCY = "156"  # CNY
UNIONPAY_CN = "中国银联股份有限公司"  # i18n-keep: data
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
TXN_TIME_FORMAT = "%Y%m%d%H%M%S"
DEFAULT_PAY_MINUTES = 15

ORDER_ID = re.compile(r"[0-9A-Za-z]{8,32}")
SUCCESS_CODES = frozenset({"00", "A6"})  # A6: 有缺陷的成功, counted as success by the demos
UNKNOWN_CODES = frozenset({"03", "04", "05"})
DUPLICATE = "12"
NOT_FOUND = "34"
NO_FILE = "98"

# The INN..ZM_ transaction file: field widths in bytes (GBK), one space between fields. 1-based field numbers.
ZM_FIELD_WIDTHS = (3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2, 6, 2, 4, 32, 1, 21,
                   15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 32, 13, 2, 1, 12, 67)
ZM_TXN_AMT, ZM_QUERY_ID, ZM_ORDER_ID, ZM_TXN_TYPE, ZM_ORIG_QUERY_ID, ZM_ORIG_ORDER_ID = 7, 10, 12, 20, 27, 41
ZM_FILE_NAME = re.compile(r"^INN.{8}ZM_")
REFUND_TXN_TYPES = frozenset({"04", "31"})  # 退货, 消费撤销: money back to the buyer


def _zm_offsets() -> list[tuple[int, int]]:
    offsets, start = [], 0
    for width in ZM_FIELD_WIDTHS:
        offsets.append((start, start + width))
        start += width + 1
    return offsets


ZM_OFFSETS = _zm_offsets()
ZM_MIN_BYTES = ZM_OFFSETS[ZM_ORIG_QUERY_ID - 1][1]  # a line must reach 原交易查询流水号


def beijing_now() -> datetime:
    return datetime.now(BEIJING)


def txn_time(at: datetime | None = None) -> str:
    return (at or beijing_now()).astimezone(BEIJING).strftime(TXN_TIME_FORMAT)


def parse_txn_time(value: str) -> datetime | None:
    """A yyyyMMddHHmmss Beijing time as an aware datetime; None when malformed."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{14}", value):
        return None
    try:
        return datetime.strptime(value, TXN_TIME_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        return None


def signing_digest(fields: dict, omit_empty: bool) -> str:
    """The lowercase hex SHA-256 of every field but `signature`, sorted, joined k=v& (unencoded)."""
    content = "&".join(f"{k}={fields[k]}" for k in sorted(fields)
                       if k != "signature" and not (omit_empty and fields[k] in (None, "")))
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=16)
def load_private_key(pem: str):
    """Loading checks the RSA key (tens of milliseconds): done once per key."""
    return serialization.load_pem_private_key(pem.encode(), password=None)


def rsa_sign(private_key, message: str) -> str:
    """base64 SHA256withRSA (PKCS#1 v1.5) of the UTF-8 message; the key as PEM or already loaded."""
    key = load_private_key(private_key) if isinstance(private_key, str) else private_key
    return base64.b64encode(key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def sign_fields(fields: dict, private_key, cert_id: str) -> dict:
    """The request form: empty values dropped, certId added, signature computed."""
    signed = {k: str(v) for k, v in fields.items() if v not in (None, "") and k != "signature"}
    signed["certId"] = cert_id
    signed["signature"] = rsa_sign(private_key, signing_digest(signed, omit_empty=True))
    return signed


def cert_serial(cert_pem: str) -> str:
    """certId: the certificate's serial number in decimal."""
    return str(x509.load_pem_x509_certificate(cert_pem.encode()).serial_number)


def parse_answer(text: str) -> dict:
    """A synchronous answer `k=v&k=v` (not URL-encoded). The key ends at the first '='; a value ends at a '&'
    outside {..} / [..] groups, so certificates (with '=' and newlines) and reserved groups survive."""
    fields: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    in_value, depth = False, 0
    for ch in text:
        if not in_value:
            if ch == "=":
                in_value = True
            elif ch == "&":
                if key:
                    fields["".join(key)] = ""
                key = []
            else:
                key.append(ch)
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]" and depth:
            depth -= 1
        if ch == "&" and depth == 0:
            fields["".join(key)] = "".join(value)
            key, value, in_value = [], [], False
        else:
            value.append(ch)
    if key:
        fields["".join(key)] = "".join(value)
    return fields


def format_answer(fields: dict) -> str:
    """The inverse of parse_answer (what the gateway sends back)."""
    return "&".join(f"{k}={v}" for k, v in fields.items())


def load_cert(pem: str | None) -> x509.Certificate | None:
    if not pem or not isinstance(pem, str):
        return None
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None


def certificate_owner(cert: x509.Certificate) -> str:
    """The third '@'-separated part of the subject CN (UnionPay's own certificates carry its company name)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    parts = str(names[0].value).split("@") if names else []
    return parts[2] if len(parts) > 2 else ""


def _valid_now(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def untrusted_reason(fields: dict, root: x509.Certificate | None, middle: x509.Certificate | None,
                     now: datetime | None = None) -> str | None:
    """None when the message is signed by a UnionPay certificate chained to our root and middle CAs; otherwise
    why not. Never raises."""
    if root is None or middle is None:
        return "no UnionPay root/middle certificate configured"
    signature, cert_pem = fields.get("signature"), fields.get("signPubKeyCert")
    if not signature or not cert_pem:
        return "unsigned (no signature or signPubKeyCert)"
    cert = load_cert(cert_pem)
    if cert is None:
        return "signPubKeyCert is not a PEM certificate"
    now = now or datetime.now(UTC)
    for name, c in (("signing", cert), ("middle", middle), ("root", root)):
        if not _valid_now(c, now):
            return f"the {name} certificate is outside its validity dates"
    try:
        cert.verify_directly_issued_by(middle)
        middle.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return "signPubKeyCert does not chain to the configured middle and root certificates"
    if not _is_ca(middle):
        return "the configured middle certificate is not a CA"
    if certificate_owner(cert) != UNIONPAY_CN:
        return "signPubKeyCert does not belong to UnionPay (CN)"
    try:
        raw = base64.b64decode(signature, validate=True)
        cert.public_key().verify(raw, signing_digest(fields, omit_empty=False).encode(), padding.PKCS1v15(),
                                 hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError, AttributeError):
        return "bad signature"
    return None


def _amount(value) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _public(fields: dict) -> dict:
    """What we keep of a message: everything but the certificate and the signature."""
    return {k: v for k, v in fields.items() if k not in ("signPubKeyCert", "signature")}


class UnionPayChannel:
    code = "unionpay"

    def __init__(self, mer_id: str, private_key: str, sign_cert: str, root_cert: str, middle_cert: str,
                 gateway: str = DEFAULT_GATEWAY, file_gateway: str = DEFAULT_FILE_GATEWAY,
                 timeout: float | None = None):
        self.mer_id = mer_id or ""
        self.private_key = private_key or ""
        self.sign_cert = sign_cert or ""
        try:
            self.cert_id = cert_serial(self.sign_cert) if self.sign_cert else ""
        except ValueError:
            self.cert_id = ""
        self.root = load_cert(root_cert)
        self.middle = load_cert(middle_cert)
        self.gateway = (gateway or DEFAULT_GATEWAY).rstrip("/")
        self.file_gateway = (file_gateway or DEFAULT_FILE_GATEWAY).rstrip("/")
        self.timeout = timeout or HTTP_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: dict) -> UnionPayChannel:
        """Keys: mer_id, private_key (secret: the merchant signing key, PEM), sign_cert (its certificate, PEM),
        root_cert and middle_cert (UnionPay's CA certificates, PEM), gateway, file_gateway, timeout (seconds)."""
        settings = settings or {}
        timeout = settings.get("timeout")
        try:
            timeout = float(timeout) if timeout not in (None, "") else None
        except (TypeError, ValueError):
            timeout = None
        return cls(mer_id=settings.get("mer_id", ""), private_key=settings.get("private_key", ""),
                   sign_cert=settings.get("sign_cert", ""), root_cert=settings.get("root_cert", ""),
                   middle_cert=settings.get("middle_cert", ""),
                   gateway=settings.get("gateway") or DEFAULT_GATEWAY,
                   file_gateway=settings.get("file_gateway") or DEFAULT_FILE_GATEWAY, timeout=timeout)

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _configured(self) -> bool:
        return bool(self.mer_id and self.private_key and self.cert_id and self.root and self.middle)

    def _require(self) -> None:
        if not self._configured():
            raise ChannelError("unionpay channel is not configured (mer_id, private_key, sign_cert, root_cert, "
                               "middle_cert)")

    def _base(self, **fields) -> dict:
        return {"version": VERSION, "encoding": "utf-8", "signMethod": SIGN_METHOD, "accessType": "0",
                "merId": self.mer_id, **fields}

    def _post(self, url: str, fields: dict, statement: bool = False) -> dict:
        """POST a signed request; the verified answer. Transport trouble or an untrusted answer: unknown. A
        statement (fileTransfer) answer carries the day's file, so it may be larger and slower."""
        body = sign_fields(fields, self.private_key, self.cert_id)
        caps = {"max_bytes": STATEMENT_MAX_BYTES, "deadline": STATEMENT_DEADLINE_SECONDS} if statement else {}
        try:
            with outbound.session(**caps) as session:
                response = session.post(url, data=body, timeout=self.timeout, allow_redirects=False,
                                        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        except outbound.FAILURES as exc:
            raise ChannelUnavailable(f"unionpay unreachable: {outbound.short_reason(exc)}") from None
        if response.status_code != 200:
            raise ChannelUnavailable(f"unionpay answered HTTP {response.status_code}")
        try:
            answer = parse_answer(response.content.decode("utf-8"))
        except UnicodeDecodeError:
            raise ChannelUnavailable("unionpay answer is not UTF-8") from None
        reason = untrusted_reason(answer, self.root, self.middle)
        if reason:
            raise ChannelUnavailable(f"unionpay answer not trusted: {reason}")
        if answer.get("merId", self.mer_id) != self.mer_id or \
                ("orderId" in fields and answer.get("orderId", fields["orderId"]) != fields["orderId"]):
            raise ChannelUnavailable("unionpay answer is about another merchant or order")
        return answer

    def _query(self, order_id: str, original_txn_time: str) -> dict:
        return self._post(self.gateway + QUERY_PATH, self._base(
            txnType="00", txnSubType="00", bizType="000000", channelType="07", orderId=order_id,
            txnTime=original_txn_time))

    def _verified_form(self, form, body: bytes) -> dict:
        if not self._configured():
            raise BadNotification("channel has no key: every notification is refused")
        fields = {str(k): str(form.get(k)) for k in form} if form else {}
        if not fields and body:
            try:
                fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError:
                raise BadNotification("body is not UTF-8") from None
        reason = untrusted_reason(fields, self.root, self.middle)
        if reason:
            raise BadNotification(reason)
        if fields.get("merId") != self.mer_id:
            raise BadNotification("notification for another merId")
        return fields

    @staticmethod
    def _message(answer: dict) -> str:
        return f"{answer.get('respCode', '?')} {answer.get('respMsg', '')}".strip()

    # --- payments ---------------------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        self._require()
        if not ORDER_ID.fullmatch(request.order_no or ""):
            raise ChannelError("unionpay orderId must be 8-32 letters or digits")
        if not isinstance(request.amount, int) or isinstance(request.amount, bool) or request.amount <= 0:
            raise ChannelError("amount must be a positive number of fen")
        now = beijing_now()
        if request.expires_at is not None:
            deadline = request.expires_at.replace(tzinfo=UTC).astimezone(BEIJING)
            if deadline <= now:
                raise ChannelError("the payment has already expired")
        else:
            deadline = now + timedelta(minutes=DEFAULT_PAY_MINUTES)
        sent_at, pay_timeout = txn_time(now), txn_time(deadline)
        fields = self._base(txnType="01", txnSubType="01", bizType="000201", channelType="07",
                            currencyCode=CURRENCY, orderId=request.order_no, txnTime=sent_at,
                            txnAmt=str(request.amount), frontUrl=request.return_url, backUrl=request.notify_url,
                            payTimeout=pay_timeout)
        form = sign_fields(fields, self.private_key, self.cert_id)
        return PaymentStart(pay_url=self.gateway + FRONT_PATH, form=form,
                            meta={"txnTime": sent_at, "payTimeout": pay_timeout})

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification:
        """The consume's back notification (or the front one the buyer's browser brings to frontUrl)."""
        fields = self._verified_form(form, body)
        if fields.get("txnType") != "01":
            raise BadNotification(f"not a consume notification (txnType {fields.get('txnType')!r})")
        for name in ("orderId", "queryId", "respCode"):
            if not fields.get(name):
                raise BadNotification(f"missing {name}")
        amount = _amount(fields.get("txnAmt"))
        if amount is None:
            raise BadNotification("txnAmt is not a number of fen")
        currency = "CNY" if fields.get("currencyCode", CURRENCY) == CURRENCY else fields["currencyCode"]
        return Notification(order_no=fields["orderId"], trade_no=fields["queryId"], amount=amount,
                            currency=currency, succeeded=fields["respCode"] in SUCCESS_CODES,
                            raw=_public(fields))

    def success_answer(self) -> NotificationAnswer:
        return NotificationAnswer("ok", 200)

    def failure_answer(self, message: str) -> NotificationAnswer:
        return NotificationAnswer("fail", 400)  # anything but 200/302 makes UnionPay send it again

    def query_payment(self, out_trade_no: str, meta: dict) -> TradeStatus:
        self._require()
        sent_at = (meta or {}).get("txnTime")
        if not sent_at:
            raise ChannelError("a unionpay query needs the consume's txnTime (PaymentStart.meta)")
        answer = self._query(out_trade_no, sent_at)
        code = answer.get("respCode")
        if code == NOT_FOUND:
            return TradeStatus(state="not_found", raw=_public(answer))
        if code != "00":
            raise ChannelUnavailable(f"unionpay query failed: {self._message(answer)}")
        if answer.get("txnType", "01") != "01":
            raise ChannelError(f"orderId {out_trade_no} is a UnionPay txnType {answer.get('txnType')}, not a consume")
        orig = answer.get("origRespCode")
        if orig in SUCCESS_CODES:
            return TradeStatus(state="paid", trade_no=answer.get("queryId"), amount=_amount(answer.get("txnAmt")),
                               raw=_public(answer))
        if orig in UNKNOWN_CODES:
            return TradeStatus(state="waiting", raw=_public(answer))
        # The attempt failed; the buyer may try again until payTimeout, after which the result is final.
        deadline = parse_txn_time((meta or {}).get("payTimeout", ""))
        state = "closed" if deadline is not None and beijing_now() > deadline else "waiting"
        return TradeStatus(state=state, raw=_public(answer))

    def close_payment(self, out_trade_no: str, meta: dict) -> bool:
        """UnionPay cannot close a front consume: its payTimeout (our expires_at) already makes it unpayable. So
        this only asks: False when the order was paid, True otherwise (ChannelUnavailable when unknown)."""
        return self.query_payment(out_trade_no, meta).state != "paid"

    # --- refunds ----------------------------------------------------------------------------------------------

    def refund_identifiers(self, request: RefundRequest) -> dict:
        """What must stay the same on every call for one refund, fixed before the first one (the refund's txnTime:
        with another, UnionPay would take a retry as a second refund)."""
        return {"refund_txnTime": (request.meta or {}).get("refund_txnTime") or txn_time()}

    def refund(self, request: RefundRequest) -> RefundResult:
        self._require()
        if not ORDER_ID.fullmatch(request.out_refund_no or ""):
            raise ChannelError("unionpay refund orderId (out_refund_no) must be 8-32 letters or digits")
        if not request.trade_no:
            raise ChannelError("a unionpay refund needs the consume's queryId (trade_no)")
        if request.amount <= 0 or request.amount > request.total:
            raise ChannelError("refund amount must be between 1 fen and the payment's amount")
        sent_at = (request.meta or {}).get("refund_txnTime") or txn_time()
        meta = {"refund_txnTime": sent_at}
        fields = self._base(txnType="04", txnSubType="00", bizType="000201", channelType="07",
                            currencyCode=CURRENCY, orderId=request.out_refund_no, txnTime=sent_at,
                            txnAmt=str(request.amount), origQryId=request.trade_no, backUrl=request.notify_url)
        try:
            answer = self._post(self.gateway + BACK_PATH, fields)
        except ChannelUnavailable as exc:
            exc.meta = meta  # the caller must retry with this txnTime: the same request, refunded once
            raise
        code = answer.get("respCode")
        if code == "00":
            return RefundResult("processing", channel_refund_no=answer.get("queryId"),
                                message="accepted; the result comes by query or notification", meta=meta)
        if code == DUPLICATE:
            # i18n-keep: data
            return RefundResult("processing", message="UnionPay already has this refund (重复交易): query it",
                                meta=meta)
        if code in UNKNOWN_CODES:
            exc = ChannelUnavailable(f"unionpay refund outcome unknown: {self._message(answer)}")
            exc.meta = meta
            raise exc
        return RefundResult("failed", message=self._message(answer), meta=meta)

    def query_refund(self, request: RefundRequest) -> RefundResult:
        self._require()
        sent_at = (request.meta or {}).get("refund_txnTime")
        if not sent_at:  # never "failed": the refund may well have been paid out under a txnTime we lost
            raise ChannelUnavailable("a unionpay refund query needs the refund's txnTime (RefundResult.meta)")
        meta = {"refund_txnTime": sent_at}
        answer = self._query(request.out_refund_no, sent_at)
        code = answer.get("respCode")
        if code == NOT_FOUND:
            # Only refunds UnionPay accepted are queried: not finding one is an anomaly (a lost txnTime, a lag),
            # never proof that nothing was refunded. Keep asking; the refund's age raises the alarm.
            # i18n-keep: data
            return RefundResult("processing", message="UnionPay does not find this refund (查无此交易)", meta=meta)
        if code != "00":
            raise ChannelUnavailable(f"unionpay refund query failed: {self._message(answer)}")
        if answer.get("txnType", "04") != "04":
            raise ChannelError(f"orderId {request.out_refund_no} is not a UnionPay refund")
        orig = answer.get("origRespCode")
        if orig in SUCCESS_CODES:
            return RefundResult("succeeded", channel_refund_no=answer.get("queryId"), meta=meta)
        if orig in UNKNOWN_CODES:
            return RefundResult("processing", channel_refund_no=answer.get("queryId"), meta=meta)
        return RefundResult("abnormal", channel_refund_no=answer.get("queryId"),
                            message=f"{orig} {answer.get('origRespMsg', '')}".strip(), meta=meta)

    def verify_refund_notification(self, headers, form: dict, body: bytes) -> RefundNotice:
        fields = self._verified_form(form, body)
        if fields.get("txnType") != "04":
            raise BadNotification(f"not a refund notification (txnType {fields.get('txnType')!r})")
        if not fields.get("orderId") or not fields.get("respCode"):
            raise BadNotification("missing orderId or respCode")
        status = "succeeded" if fields["respCode"] in SUCCESS_CODES else \
            "processing" if fields["respCode"] in UNKNOWN_CODES else "abnormal"
        return RefundNotice(out_refund_no=fields["orderId"], status=status, channel_refund_no=fields.get("queryId"),
                            amount=_amount(fields.get("txnAmt")), raw=_public(fields))

    # --- reconciliation ---------------------------------------------------------------------------------------

    def download_statement(self, day: date) -> list[StatementLine]:
        """The transaction file of settleDate MMDD (UnionPay's settlement day; it may cut over before midnight)."""
        self._require()
        answer = self._post(self.file_gateway + FILE_PATH, self._base(
            txnType="76", txnSubType="01", bizType="000000", fileType="00", settleDate=day.strftime("%m%d"),
            txnTime=txn_time()), statement=True)
        code = answer.get("respCode")
        if code == NO_FILE:
            return []
        if code != "00":
            raise ChannelUnavailable(f"unionpay file transfer failed: {self._message(answer)}")
        try:
            content = zlib.decompress(base64.b64decode(answer.get("fileContent", ""), validate=True))
        except (ValueError, zlib.error):
            raise ChannelUnavailable("unionpay fileContent is not base64(zlib(...))") from None
        return self.parse_statement(content)

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """The zip from fileTransfer (every INN..ZM_ file in it), or one INN..ZM_ file's bytes (GBK, fixed width).
        Payments: trade_no = 查询流水号 (the notification's queryId), order_no = 商户订单号. Refunds (交易类型 04,
        and 31 消费撤销): trade_no = 原交易查询流水号 and order_no = 原始交易订单号, i.e. the payment's own."""
        if content[:2] == b"PK":
            try:
                archive = zipfile.ZipFile(io.BytesIO(content))
            except zipfile.BadZipFile:
                raise ChannelError("statement is not a valid zip") from None
            lines: list[StatementLine] = []
            for name in sorted(archive.namelist()):
                if ZM_FILE_NAME.match(name.rsplit("/", 1)[-1]):
                    lines.extend(_parse_zm(archive.read(name)))
            return lines
        return _parse_zm(content)


def _parse_zm(content: bytes) -> list[StatementLine]:
    lines = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(raw) < ZM_MIN_BYTES:
            raise ChannelError(f"statement line {number} is too short for UnionPay's ZM layout")

        def field(n: int, raw=raw) -> str:
            start, end = ZM_OFFSETS[n - 1]
            return raw[start:end].decode("gb18030", errors="replace").strip()

        text_amount = field(ZM_TXN_AMT)
        if text_amount[:1].isalpha():
            text_amount = text_amount[1:]
        if not text_amount.isdigit():
            raise ChannelError(f"statement line {number}: 交易金额 {text_amount!r} is not fen")  # i18n-keep: data
        amount = int(text_amount)
        if field(ZM_TXN_TYPE) in REFUND_TXN_TYPES:
            trade_no = field(ZM_ORIG_QUERY_ID) or field(ZM_QUERY_ID)
            order_no = field(ZM_ORIG_ORDER_ID) or field(ZM_ORDER_ID)
            lines.append(StatementLine(trade_no=trade_no, order_no=order_no, amount=amount, kind="refund"))
        else:
            lines.append(StatementLine(trade_no=field(ZM_QUERY_ID), order_no=field(ZM_ORDER_ID), amount=amount,
                                       kind="payment"))
    return lines

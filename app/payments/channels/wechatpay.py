"""WeChat Pay API v3, native pay (扫码支付): signed requests, signed answers, notifications verified and decrypted.

Protocol, as implemented here (sources: /work/shared/PROTOCOLS.md section 2, tags W1-W7):

- Every request carries `Authorization: WECHATPAY2-SHA256-RSA2048 mchid,nonce_str,signature,timestamp,serial_no`,
  the signature being SHA256withRSA (merchant API key) over `METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n` (URL = path
  and query as sent, BODY the exact bytes, "" for GET).
- Every answer we act on must carry `Wechatpay-Timestamp/-Nonce/-Signature/-Serial`, verified with the platform
  key named by `Wechatpay-Serial` (a platform certificate's hex serial or a `PUB_KEY_ID_...` WeChat Pay public key
  id: both are keys of the `platform_keys` setting) over `TIMESTAMP\\nNONCE\\nBODY\\n`, the timestamp within
  300 s. An unsigned or badly signed answer, a timeout, a refused connection or an HTTP 5xx is *unknown*:
  ChannelUnavailable. (WeChat does not sign the answer when it could not authenticate our request, e.g. 401
  SIGN_ERROR: that too is ChannelUnavailable, with the HTTP status in the message.)
- Notifications (payment TRANSACTION.SUCCESS, refund REFUND.SUCCESS/ABNORMAL/CLOSED) are verified the same way
  and their `resource` decrypted with AEAD_AES_256_GCM (key = the 32-byte APIv3 key, 12-byte nonce,
  associated_data as given). Received = HTTP 200/204; anything else is resent by WeChat.
- Amounts are integer fen in JSON (`amount.total`, `amount.refund`), currency CNY.

Error codes (non-2xx answers are `{"code", "message"}`), looked up with the search tool:
- 404 ORDER_NOT_EXIST "订单不存在" for a query of an unknown out_trade_no (older pages: ORDERNOTEXIST; both are
  accepted). Source: a public copy of WeChat Pay's v3 error-code table (a Java enum WeChatStatusCode, package
  com.lemonwind.test.common.wechat), and merchants' code that treats ORDER_NOT_EXIST as "no such order"; the
  official query page (pay.weixin.qq.com/doc/v3/merchant/4013070356) could be read only in part.
- 400 ORDERPAID "订单已支付" (ORDER_PAID in the same table; both accepted) when closing a paid order. Source: that
  table; the official close page (doc/v3/merchant/4013070360) says 204 without a body on success, but its own
  error list could not be read: ORDERPAID as *the* answer to closing a paid order is unconfirmed.
- 400 NO_STATEMENT_EXIST "账单文件不存在" (no bill that day) and 400 STATEMENT_CREATING (not generated yet, asked
  again later): the error table of a copy of the 下载账单 API page, which also says the download URL is signed
  like any request and the file's hash should be checked (that copy says the URL lives 30 s; newer docs 5 min).
- 404 RESOURCE_NOT_EXISTS (unknown refund), 403 NOT_ENOUGH (merchant balance too low), 400 INVALID_REQUEST,
  429 FREQUENCY_LIMITED, 5xx SYSTEM_ERROR / BIZ_ERR_NEED_RETRY ("retry with the same out_refund_no"): the same
  table. FREQUENCY_LIMITED, STATEMENT_CREATING and the 5xx are "ask again later" (ChannelUnavailable); any
  other signed 4xx to a refund is a definite refusal (RefundResult "failed").
Unconfirmed: whether WeChat signs every 4xx answer (we act on a 4xx only when it is signed).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import secrets
import time
from datetime import UTC, date, datetime, timedelta, timezone
from urllib.parse import quote, urlencode, urlsplit

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app import outbound
from app.money import parse_yuan
from app.payments.channels import rsa
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

DEFAULT_API = "https://api.mch.weixin.qq.com"
NATIVE_PATH = "/v3/pay/transactions/native"
REFUNDS_PATH = "/v3/refund/domestic/refunds"
TRADEBILL_PATH = "/v3/bill/tradebill"
MAX_AGE_SECONDS = 300
CHINA = timezone(timedelta(hours=8))

TRADE_STATES = {"SUCCESS": "paid", "REFUND": "refunded", "NOTPAY": "waiting", "USERPAYING": "waiting",
                "CLOSED": "closed", "REVOKED": "closed", "PAYERROR": "closed"}
REFUND_STATES = {"SUCCESS": "succeeded", "PROCESSING": "processing", "ABNORMAL": "abnormal", "CLOSED": "failed"}
REFUND_EVENTS = {"REFUND.SUCCESS": "SUCCESS", "REFUND.ABNORMAL": "ABNORMAL", "REFUND.CLOSED": "CLOSED"}
ORDER_NOT_FOUND = {"ORDER_NOT_EXIST", "ORDERNOTEXIST"}
ORDER_PAID = {"ORDERPAID", "ORDER_PAID"}
ORDER_CLOSED = {"ORDER_CLOSED", "ORDERCLOSED"}
# 4xx codes that mean "try again later", not "refused"
RETRY_CODES = {"FREQUENCY_LIMITED", "RATELIMIT_EXCEEDED", "FREQUENCY_LIMIT_EXCEED", "SYSTEM_ERROR", "SYSTEMERROR",
               "BIZ_ERR_NEED_RETRY", "BANK_ERROR", "STATEMENT_CREATING"}


def decrypt_resource(api_v3_key: str, resource: dict) -> dict:
    try:
        ciphertext = base64.b64decode(resource["ciphertext"])
        associated = (resource.get("associated_data") or "").encode()
        plain = AESGCM(api_v3_key.encode()).decrypt(resource["nonce"].encode(), ciphertext, associated)
        tx = json.loads(plain)
    except (InvalidTag, KeyError, ValueError, TypeError, AttributeError):
        raise BadNotification("resource does not decrypt with the APIv3 key") from None
    if not isinstance(tx, dict):
        raise BadNotification("resource is not a transaction object")
    return tx


def authorization(mchid: str, serial_no: str, private_key_pem: str, method: str, path: str, body: str) -> str:
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    try:
        signature = rsa.sign(private_key_pem, f"{method}\n{path}\n{timestamp}\n{nonce}\n{body}\n")
    except (ValueError, TypeError, AttributeError, UnsupportedAlgorithm):
        raise ChannelError("wechatpay private_key is not a usable PEM RSA private key") from None
    return (f'WECHATPAY2-SHA256-RSA2048 mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{serial_no}"')


def _header(headers, name: str) -> str:
    """A header from werkzeug/requests headers (case-insensitive) or a plain dict (any case)."""
    if headers is None:
        return ""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        lowered = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == lowered), None)
    return str(value or "")


def _is_fen(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 15


def rfc3339_china(moment: datetime) -> str:
    """Naive UTC (or aware) -> 'yyyy-MM-DDTHH:mm:ss+08:00', the form time_expire takes."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(CHINA).strftime("%Y-%m-%dT%H:%M:%S+08:00")


class _Answer:
    def __init__(self, status: int, data: dict, text: str):
        self.status, self.data, self.text = status, data, text

    @property
    def code(self) -> str:
        return str(self.data.get("code") or "")

    @property
    def message(self) -> str:
        return str(self.data.get("message") or "")

    def describe(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}".strip().rstrip(":")


class WechatPayChannel:
    code = "wechatpay"

    def __init__(self, appid: str, mchid: str, serial_no: str, private_key: str, api_v3_key: str,
                 platform_keys: dict[str, str], api_base: str = DEFAULT_API, timeout: float | None = None):
        self.appid, self.mchid, self.serial_no = appid or "", mchid or "", serial_no or ""
        self.private_key, self.api_v3_key = private_key or "", api_v3_key or ""
        self.platform_keys = platform_keys if isinstance(platform_keys, dict) else {}  # key id -> PEM public key
        self.api_base = (api_base or DEFAULT_API).rstrip("/")
        self.timeout = timeout if timeout else HTTP_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: dict) -> WechatPayChannel:
        """Settings: appid, mchid, serial_no (merchant certificate serial), private_key (secret, PEM),
        api_v3_key (secret, 32 characters), platform_keys ({key id: PEM}; a JSON text is accepted too),
        api_base (blank: production), timeout (seconds, optional)."""
        s = settings or {}
        keys = s.get("platform_keys") or {}
        if isinstance(keys, str):
            try:
                keys = json.loads(keys)
            except ValueError:
                keys = {}
        try:
            timeout = float(s.get("timeout") or 0) or None
        except (TypeError, ValueError):
            timeout = None
        return cls(s.get("appid", ""), s.get("mchid", ""), s.get("serial_no", ""), s.get("private_key", ""),
                   s.get("api_v3_key", ""), keys if isinstance(keys, dict) else {}, s.get("api_base", ""), timeout)

    # --- configuration and transport ----------------------------------------------------------------------

    def _configured(self) -> bool:
        """Enough to verify notifications."""
        return bool(self.mchid and self.api_v3_key and len(self.api_v3_key) == 32 and self.platform_keys)

    def _require_configured(self) -> None:
        if not (self._configured() and self.private_key and self.appid and self.serial_no):
            raise ChannelError("wechatpay channel is not configured")

    def _signed(self, headers, body: bytes) -> bool:
        """The answer or notification carries a valid platform signature with a fresh timestamp."""
        key = self.platform_keys.get(_header(headers, "Wechatpay-Serial"))
        timestamp = _header(headers, "Wechatpay-Timestamp")
        if not key or not timestamp.isdecimal() or abs(time.time() - int(timestamp)) > MAX_AGE_SECONDS:
            return False
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        message = f"{timestamp}\n{_header(headers, 'Wechatpay-Nonce')}\n{text}\n"
        return rsa.verify(key, message, _header(headers, "Wechatpay-Signature"))

    def _response_signed(self, response) -> bool:
        return self._signed(response.headers, response.content)

    def _call(self, method: str, path: str, payload: dict | None = None) -> _Answer:
        """One signed API call. Returns the verified answer (2xx or a signed 4xx refusal); raises
        ChannelUnavailable when the outcome is unknown."""
        self._require_configured()
        body = "" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        headers = {"Authorization": authorization(self.mchid, self.serial_no, self.private_key, method, path, body),
                   "Accept": "application/json", "User-Agent": "kameng-wechatpay/1"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            with outbound.session() as session:
                response = session.request(method, self.api_base + path, data=body.encode() if body else None,
                                           headers=headers, timeout=self.timeout, allow_redirects=False)
        except outbound.FAILURES as exc:
            raise ChannelUnavailable(f"wechatpay unreachable: {outbound.short_reason(exc)}") from None
        return self._read(response)

    def _read(self, response) -> _Answer:
        status = response.status_code
        try:
            data = json.loads(response.content) if response.content else {}
        except ValueError:
            data = None
        answer = _Answer(status, data if isinstance(data, dict) else {}, response.text)
        if status >= 500 or status < 200 or 300 <= status < 400:
            raise ChannelUnavailable(f"wechatpay answered {answer.describe()}")
        if not self._response_signed(response):
            if status >= 400:
                raise ChannelUnavailable(f"wechatpay refused the request: {answer.describe()} (answer not signed)")
            raise ChannelUnavailable("wechatpay answer is not signed by a known platform key")
        if status >= 400 and answer.code in RETRY_CODES:
            raise ChannelUnavailable(f"wechatpay asks to retry later: {answer.describe()}")
        if not isinstance(data, dict):
            raise ChannelUnavailable(f"wechatpay answer (HTTP {status}) is not a JSON object")
        return answer

    # --- payments -----------------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        self._require_configured()
        payload = {"appid": self.appid, "mchid": self.mchid, "description": request.subject[:127],
                   "out_trade_no": request.order_no, "notify_url": request.notify_url,
                   "amount": {"total": int(request.amount), "currency": "CNY"}}
        if request.expires_at is not None:
            payload["time_expire"] = rfc3339_china(request.expires_at)
        answer = self._call("POST", NATIVE_PATH, payload)
        if answer.status != 200:
            raise ChannelError(f"wechatpay refused the payment: {answer.describe()}")
        code_url = answer.data.get("code_url")
        if not code_url or not isinstance(code_url, str):
            raise ChannelUnavailable("wechatpay answer has no code_url")
        return PaymentStart(pay_url=f"/pay/wechatpay/qr/{request.order_no}", code_url=code_url)

    def _verified_event(self, headers, body: bytes) -> tuple[dict, dict]:
        """(envelope, decrypted resource) of a genuine notification, else BadNotification."""
        if not self._configured():
            raise BadNotification("channel has no key: every notification is refused")
        serial = _header(headers, "Wechatpay-Serial")
        timestamp = _header(headers, "Wechatpay-Timestamp")
        if self.platform_keys.get(serial) is None:
            raise BadNotification("unknown Wechatpay-Serial")
        if not timestamp.isdecimal() or abs(time.time() - int(timestamp)) > MAX_AGE_SECONDS:
            raise BadNotification("Wechatpay-Timestamp outside the allowed window")
        try:
            text = (body or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise BadNotification("body is not UTF-8") from None
        if not self._signed(headers, body or b""):
            raise BadNotification("bad signature")
        try:
            envelope = json.loads(text)
            resource = envelope["resource"]
        except (ValueError, KeyError, TypeError):
            raise BadNotification("malformed notification") from None
        if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise BadNotification("unsupported resource algorithm")
        return envelope, decrypt_resource(self.api_v3_key, resource)

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification:
        envelope, tx = self._verified_event(headers, body)
        event = str(envelope.get("event_type") or "")
        if event and not event.startswith("TRANSACTION."):
            raise BadNotification(f"not a payment notification: {event}")
        if tx.get("mchid") != self.mchid or (self.appid and tx.get("appid") != self.appid):
            raise BadNotification("notification for another merchant")
        amount = tx.get("amount") or {}
        if not isinstance(amount, dict) or not _is_fen(amount.get("total")) or not tx.get("out_trade_no") \
                or not tx.get("transaction_id"):
            raise BadNotification("transaction lacks out_trade_no, transaction_id or amount.total")
        return Notification(order_no=tx["out_trade_no"], trade_no=tx["transaction_id"], amount=amount["total"],
                            currency=amount.get("currency", "CNY"), succeeded=tx.get("trade_state") == "SUCCESS",
                            raw={"event_type": envelope.get("event_type"), "id": envelope.get("id"),
                                 "transaction": tx})

    def success_answer(self) -> NotificationAnswer:
        # i18n-keep: data
        return NotificationAnswer(json.dumps({"code": "SUCCESS", "message": "成功"}), 200, "application/json")

    def failure_answer(self, message: str) -> NotificationAnswer:
        return NotificationAnswer(json.dumps({"code": "FAIL", "message": message[:100]}, ensure_ascii=False), 400,
                                  "application/json")

    def query_payment(self, out_trade_no: str, meta: dict) -> TradeStatus:
        path = (f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}?"
                + urlencode({"mchid": self.mchid}))
        answer = self._call("GET", path)
        if answer.code in ORDER_NOT_FOUND:
            return TradeStatus(state="not_found", raw={"code": answer.code})
        if answer.status != 200:
            raise ChannelError(f"wechatpay refused the query: {answer.describe()}")
        tx = answer.data
        if tx.get("out_trade_no") != out_trade_no or tx.get("mchid", self.mchid) != self.mchid:
            raise ChannelUnavailable("wechatpay answered about another order")
        state = TRADE_STATES.get(str(tx.get("trade_state") or ""))
        if state is None:
            raise ChannelUnavailable(f"wechatpay trade_state {tx.get('trade_state')!r} is unknown")
        amount = tx.get("amount") if isinstance(tx.get("amount"), dict) else {}
        paid = state in ("paid", "refunded")
        if paid and (not tx.get("transaction_id") or not _is_fen(amount.get("total"))):
            raise ChannelUnavailable("wechatpay paid trade lacks transaction_id or amount.total")
        return TradeStatus(state=state, trade_no=tx.get("transaction_id") or None,
                           amount=amount.get("total") if paid else None, currency=amount.get("currency") or "CNY",
                           raw={"trade_state": tx.get("trade_state"), "transaction": tx})

    def close_payment(self, out_trade_no: str, meta: dict) -> bool:
        answer = self._call("POST", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close",
                            {"mchid": self.mchid})
        if answer.status in (200, 204) or answer.code in ORDER_CLOSED or answer.code in ORDER_NOT_FOUND:
            return True  # closed now, closed before, or never created there: it cannot be paid
        if answer.code in ORDER_PAID:
            return False
        raise ChannelError(f"wechatpay refused to close: {answer.describe()}")

    # --- refunds ------------------------------------------------------------------------------------------

    def _refund_result(self, data: dict, out_refund_no: str) -> RefundResult:
        if data.get("out_refund_no") != out_refund_no:
            raise ChannelUnavailable("wechatpay answered about another refund")
        raw_status = str(data.get("status") or "")
        status = REFUND_STATES.get(raw_status)
        if status is None:
            raise ChannelUnavailable(f"wechatpay refund status {raw_status!r} is unknown")
        refund_id = data.get("refund_id") or None
        meta = {"refund_id": refund_id} if refund_id else {}
        return RefundResult(status=status, channel_refund_no=refund_id, message=raw_status, meta=meta)

    def refund(self, request: RefundRequest) -> RefundResult:
        payload: dict = {}
        if request.trade_no:
            payload["transaction_id"] = request.trade_no
        else:
            payload["out_trade_no"] = request.out_trade_no
        payload["out_refund_no"] = request.out_refund_no
        if request.reason:
            payload["reason"] = request.reason[:80]
        if request.notify_url:
            payload["notify_url"] = request.notify_url
        payload["amount"] = {"refund": int(request.amount), "total": int(request.total), "currency": "CNY"}
        answer = self._call("POST", REFUNDS_PATH, payload)
        if answer.status == 200:
            return self._refund_result(answer.data, request.out_refund_no)
        return RefundResult(status="failed", message=answer.describe()[:200])

    def query_refund(self, request: RefundRequest) -> RefundResult:
        answer = self._call("GET", f"{REFUNDS_PATH}/{quote(request.out_refund_no, safe='')}")
        if answer.status == 200:
            return self._refund_result(answer.data, request.out_refund_no)
        if answer.status == 404:
            return RefundResult(status="failed", message=f"no such refund at wechatpay ({answer.describe()})"[:200])
        raise ChannelError(f"wechatpay refused the refund query: {answer.describe()}")

    def verify_refund_notification(self, headers, form: dict, body: bytes) -> RefundNotice:
        envelope, refund = self._verified_event(headers, body)
        event = str(envelope.get("event_type") or "")
        expected = REFUND_EVENTS.get(event)
        if expected is None:
            raise BadNotification(f"not a refund notification: {event or 'no event_type'}")
        if refund.get("mchid") != self.mchid:
            raise BadNotification("notification for another merchant")
        if refund.get("refund_status") != expected:
            raise BadNotification("refund_status does not match event_type")
        amount = refund.get("amount") or {}
        if not refund.get("out_refund_no") or not refund.get("refund_id") or not isinstance(amount, dict) \
                or not _is_fen(amount.get("refund")):
            raise BadNotification("refund lacks out_refund_no, refund_id or amount.refund")
        return RefundNotice(out_refund_no=refund["out_refund_no"], status=REFUND_STATES[expected],
                            channel_refund_no=refund["refund_id"], amount=amount["refund"],
                            raw={"event_type": event, "id": envelope.get("id"), "refund": refund})

    # --- bills --------------------------------------------------------------------------------------------

    def download_statement(self, day: date) -> list[StatementLine]:
        answer = self._call("GET", f"{TRADEBILL_PATH}?" + urlencode({"bill_date": day.isoformat(),
                                                                     "bill_type": "ALL"}))
        if answer.code == "NO_STATEMENT_EXIST":
            return []
        if answer.status != 200:
            raise ChannelError(f"wechatpay refused the bill: {answer.describe()}")
        hash_type, hash_value = str(answer.data.get("hash_type") or ""), str(answer.data.get("hash_value") or "")
        download_url = str(answer.data.get("download_url") or "")
        if hash_type.upper() != "SHA1" or not hash_value or not download_url:
            raise ChannelUnavailable("wechatpay bill answer lacks hash_type SHA1, hash_value or download_url")
        content = self._download(download_url)
        if not hmac.compare_digest(hashlib.sha1(content).hexdigest(), hash_value.lower()):
            raise ChannelUnavailable("wechatpay bill does not match its SHA1 hash")
        return self.parse_statement(content)

    def _download(self, url: str) -> bytes:
        """GET the bill file (same host as the API), signed as any request; the answer itself is unsigned."""
        parts, base = urlsplit(url), urlsplit(self.api_base)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            raise ChannelUnavailable("wechatpay bill download_url is not on the API host")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Authorization": authorization(self.mchid, self.serial_no, self.private_key, "GET", path, ""),
                   "Accept": "*/*", "User-Agent": "kameng-wechatpay/1"}
        try:
            with outbound.session(max_bytes=STATEMENT_MAX_BYTES, deadline=STATEMENT_DEADLINE_SECONDS) as session:
                response = session.get(self.api_base + path, headers=headers, timeout=self.timeout,
                                       allow_redirects=False)
        except outbound.FAILURES as exc:
            raise ChannelUnavailable(f"wechatpay bill download failed: {outbound.short_reason(exc)}") from None
        if response.status_code != 200:
            raise ChannelUnavailable(f"wechatpay bill download answered HTTP {response.status_code}")
        return response.content

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """WeChat Pay's trade bill (ALL, SUCCESS or REFUND): CSV whose cells start with '`'; the detail header
        names 微信订单号, 商户订单号, 交易状态, 应结订单金额 (yuan) and 退款金额; a REFUND row is a refund of
        退款金额, any other row a payment of 应结订单金额. The summary block (总交易单数, ...) ends the details."""
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ChannelError("not a WeChat Pay trade bill: not UTF-8") from None
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lstrip("`") for h in rows[0]]
        try:
            # i18n-keep: data
            i_trade, i_order, i_state = header.index("微信订单号"), header.index("商户订单号"), header.index("交易状态")
            i_amount = header.index("应结订单金额")  # i18n-keep: data
        except ValueError:
            # i18n-keep: data
            raise ChannelError(
                "not a WeChat Pay trade bill: missing 微信订单号/商户订单号/交易状态/应结订单金额") from None
        i_refund = header.index("退款金额") if "退款金额" in header else None  # i18n-keep: data
        lines = []
        for n, row in enumerate(rows[1:], start=2):
            cells = [c.strip().lstrip("`").strip() for c in row]
            if not cells or cells[0] == "总交易单数" \
                    or len(cells) <= max(i_trade, i_order, i_amount, i_state) or not cells[i_trade]:  # i18n-keep: data
                break  # the summary block (总交易单数, ...) follows the detail lines
            try:
                if cells[i_state] == "REFUND" and i_refund is not None:
                    lines.append(StatementLine(cells[i_trade], cells[i_order], parse_yuan(cells[i_refund]), "refund"))
                else:
                    lines.append(StatementLine(cells[i_trade], cells[i_order], parse_yuan(cells[i_amount]),
                                               "payment"))
            except ValueError:
                raise ChannelError(f"WeChat Pay trade bill line {n}: the amount is not in yuan") from None
        return lines

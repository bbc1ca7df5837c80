"""Alipay (支付宝) OpenAPI with RSA2: page pay, trade query, close, refund, refund query, the trade bill, and the
asynchronous payment notification.

Protocol (what was confirmed, and where; /work/shared/PROTOCOLS.md section 1 names the sources A1-A6):
- Requests: app_id, method, format=JSON, charset=utf-8, sign_type=RSA2, timestamp "yyyy-MM-dd HH:mm:ss" in China
  time (GMT+8), version=1.0, biz_content (JSON), sign. The string to sign is every non-empty parameter but `sign`,
  sorted by name, k=v joined by & (unencoded); SHA256withRSA, base64 [A1 DefaultAlipayClient/get_sign_content].
  As the Python SDK does, API calls POST with the common parameters in the query string and biz_content in the
  form body (UTF-8); page pay is a signed GET URL to the gateway that the buyer's browser opens.
- Replies: {"<method with _>_response": {...}, "sign": "..."} (or "error_response"). The signature is checked over
  the node's raw text from its "{" to the matching "}", never a re-serialization [A1 __parse_response, which
  verifies every reply, errors included]; a reply with the node twice (or two `sign`s) is refused, as is an
  unsigned one. code 10000 = success; 20000 (isp.unknow-error) = unknown; 40001/40002/40006 = refused by the
  gateway (isv.invalid-signature, isv.invalid-app-id, ...); 40004 + sub_code = business failure
  [opendocs 105806, copied at open.alitrip.com articleId=105806].
- alipay.trade.page.pay: time_expire is the absolute deadline "yyyy-MM-dd HH:mm:ss" (timeout_express is relative
  and starts late, e-com-net.com/article/1304244508627603456). A page pay the buyer never opened does not exist
  at Alipay: query and close answer ACQ.TRADE_NOT_EXIST [A6 707619]. Closing it does not stop the signed URL
  from being opened later: time_expire does.
- alipay.trade.query: trade_status WAIT_BUYER_PAY -> waiting; TRADE_SUCCESS / TRADE_FINISHED -> paid;
  TRADE_CLOSED is "closed unpaid or fully refunded" [A3 AlipayTradeQueryResponse]. The query answer has no
  refund_fee, so the two are told apart by send_pay_date (the payout time, only on paid trades):
  TRADE_CLOSED with send_pay_date -> "refunded", without -> "closed". ACQ.TRADE_NOT_EXIST -> not_found.
- alipay.trade.close: ACQ.TRADE_NOT_EXIST (never opened) counts as closed; ACQ.TRADE_STATUS_ERROR ("only a trade
  waiting for payment can be closed", zhifubao.apifox.cn api-126371943) is resolved by a query: paid or
  refunded -> False, closed -> True.
- alipay.trade.refund with out_request_no = our out_refund_no: one out_request_no refunds once; code 10000 alone
  is not success, fund_change=Y is (developer.aliyun.com/article/707647); a repeated out_request_no answers
  fund_change=N. So on N we ask alipay.trade.fastpay.refund.query at once: REFUND_SUCCESS -> succeeded, else
  "processing". ACQ.SYSTEM_ERROR / 20000 -> ChannelUnavailable (retry with the same out_refund_no, as Alipay
  asks). ACQ.SELLER_BALANCE_NOT_ENOUGH -> "abnormal" (nothing refunded; staff must top up the Alipay balance
  and retry the same out_refund_no). Any other 40004 / 4000x -> "failed" with the sub_code.
- alipay.trade.fastpay.refund.query: "if the query returns data the refund succeeded; if not, it did not (not
  received or failed): call refund again with the same out_request_no" (docs.open.alipay.com api_1
  alipay.trade.fastpay.refund.query); newer answers add refund_status=REFUND_SUCCESS. Our choice for "absent":
  RefundResult("processing") with that advice in the message, never "failed": "failed" would invite a new
  out_refund_no and a second refund while the first may still be in flight. Calling refund() again with the
  same out_refund_no is the safe way to settle it (it cannot pay twice).
- Refund notifications: Alipay has no refund notification of its own for alipay.trade.refund (at most the
  trade's own trade_status_sync with refund_fee/out_biz_no, which verify_notification treats as a payment
  notification; unconfirmed), so verify_refund_notification refuses everything.
- alipay.data.dataservice.bill.downloadurl.query (bill_type=trade, bill_date=yyyy-MM-dd) -> bill_download_url,
  valid 30 s; isp.bill_not_exist -> no bill -> [] [A5 bill_downloadurl_query.go]. The file is a zip whose entry
  names are GBK without the UTF-8 flag; the detail file ends in 业务明细.csv (the summary in 业务明细(汇总).csv);
  GBK CSV, "#" lines are header/footer, 25 columns, values may end in a tab [A5]. Refund rows are 业务类型=退款
  with a negative 商家实收 (several parsers in public code; which amount 订单金额 shows on a partial refund row is
  unconfirmed), so a refund's amount is |商家实收| when the column is there, else |订单金额|.
- Notifications: form POST, verified over the decoded values minus sign and sign_type [A2 Signer.verifyParams];
  answered with the exact body "success" [A4].
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import UTC, date, datetime, timedelta, timezone
from urllib.parse import urlencode

from app import outbound
from app.money import format_fen, parse_yuan
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

DEFAULT_GATEWAY = "https://openapi.alipay.com/gateway.do"
PAID_STATES = {"TRADE_SUCCESS", "TRADE_FINISHED"}
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")  # Alipay's clock: GMT+8, no daylight saving
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SUCCESS = "10000"
CLOSE_STATUS_ERRORS = {"ACQ.TRADE_STATUS_ERROR", "ACQ.REASON_ILLEGAL_STATUS", "ACQ.REASON_TRADE_STATUS_INVALID"}
DETAIL_SUFFIX = "业务明细.csv"  # i18n-keep: data
MAX_BILL_BYTES = 64 * 1024 * 1024
_UTF8_NAME_FLAG = 0x800


def content_to_sign(params: dict, exclude: tuple[str, ...] = ("sign",)) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in exclude and params[k] not in (None, ""))


def yuan(fen: int) -> str:
    """1250 -> '12.50' (Alipay amounts: yuan, two decimals)."""
    return format_fen(int(fen), symbol=False).replace(",", "")


def china_now() -> datetime:
    return datetime.now(CHINA)


def china_time(at_utc: datetime) -> str:
    """Naive UTC (how we store times) -> Alipay's "yyyy-MM-dd HH:mm:ss" in China time."""
    aware = at_utc.replace(tzinfo=UTC) if at_utc.tzinfo is None else at_utc
    return aware.astimezone(CHINA).strftime(TIME_FORMAT)


# --- the signed reply ----------------------------------------------------------------------------------------

_WS = " \t\n\r"


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def top_level_members(text: str) -> list[tuple[str, int, int]]:
    """The members of a JSON object text as (key, value start, value end), in order, repeated keys kept, so the
    exact text of a member's value is text[start:end]. ValueError when the text is not one JSON object."""
    decoder = json.JSONDecoder()
    i = _skip(text, 0)
    if i >= len(text) or text[i] != "{":
        raise ValueError("not a JSON object")
    i = _skip(text, i + 1)
    members: list[tuple[str, int, int]] = []
    if i < len(text) and text[i] == "}":
        end = i + 1
    else:
        while True:
            if i >= len(text) or text[i] != '"':
                raise ValueError("expected a member name")
            key, i = json.decoder.scanstring(text, i + 1)
            i = _skip(text, i)
            if i >= len(text) or text[i] != ":":
                raise ValueError("expected ':'")
            i = _skip(text, i + 1)
            _, value_end = decoder.raw_decode(text, i)
            members.append((key, i, value_end))
            i = _skip(text, value_end)
            if i < len(text) and text[i] == ",":
                i = _skip(text, i + 1)
                continue
            if i < len(text) and text[i] == "}":
                end = i + 1
                break
            raise ValueError("expected ',' or '}'")
    if _skip(text, end) != len(text):
        raise ValueError("data after the JSON object")
    return members


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"repeated member {key!r}")
        seen[key] = value
    return seen


def signed_node(text: str, method: str, alipay_public_key: str) -> dict:
    """The reply's node (`<method>_response`, or `error_response`) once `sign` verifies over its raw text.
    ChannelUnavailable for anything else: not JSON, no node, a repeated node or sign, unsigned, badly signed."""
    try:
        members = top_level_members(text)
    except ValueError:
        raise ChannelUnavailable(f"alipay {method}: the answer is not a JSON object") from None
    names = [key for key, _, _ in members]
    expected = method.replace(".", "_") + "_response"
    for name in (expected, "error_response", "sign"):
        if names.count(name) > 1:
            raise ChannelUnavailable(f"alipay {method}: the answer repeats {name!r}")
    nodes = [m for m in members if m[0] in (expected, "error_response")]
    if len(nodes) != 1:
        raise ChannelUnavailable(f"alipay {method}: the answer has no single {expected} node")
    _, start, end = nodes[0]
    node_text = text[start:end]
    try:
        node = json.loads(node_text, object_pairs_hook=_unique_pairs)
    except ValueError:
        raise ChannelUnavailable(f"alipay {method}: the answer node repeats a member") from None
    if not isinstance(node, dict):
        raise ChannelUnavailable(f"alipay {method}: the answer node is not an object")
    signs = [json.loads(text[s:e]) for key, s, e in members if key == "sign"]
    signature = signs[0] if signs else None
    if not isinstance(signature, str) or not signature:
        raise ChannelUnavailable(f"alipay {method}: unsigned answer ({describe(node)})")
    if not rsa.verify(alipay_public_key, node_text, signature):
        raise ChannelUnavailable(f"alipay {method}: the answer's signature does not verify ({describe(node)})")
    return node


def describe(node: dict) -> str:
    parts = [str(node.get(k)) for k in ("code", "msg", "sub_code", "sub_msg") if node.get(k)]
    return " ".join(parts) or "no code"


def is_unknown(node: dict) -> bool:
    """Alipay's "try again" answers: the outcome of the call is not known."""
    sub_code = str(node.get("sub_code") or "")
    return node.get("code") == "20000" or sub_code.endswith("SYSTEM_ERROR") or sub_code.endswith("unknow-error")


# --- the adapter ---------------------------------------------------------------------------------------------

class AlipayChannel:
    code = "alipay"

    def __init__(self, app_id: str, private_key: str, alipay_public_key: str, gateway: str = DEFAULT_GATEWAY,
                 timeout: float | None = None, seller_id: str = ""):
        self.app_id = app_id or ""
        self.seller_id = seller_id or ""  # our Alipay account (2088...): notifications for another are refused
        self.private_key = private_key or ""
        self.alipay_public_key = alipay_public_key or ""
        self.gateway = gateway or DEFAULT_GATEWAY
        self.timeout = timeout if timeout and timeout > 0 else HTTP_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: dict | None) -> AlipayChannel:
        """Settings: app_id, private_key (secret: the app's private key, PEM), alipay_public_key (PEM), seller_id
        (optional: our 2088... account id), gateway (default the production gateway), timeout (seconds, optional)."""
        s = settings or {}
        return cls(s.get("app_id", ""), s.get("private_key", ""), s.get("alipay_public_key", ""),
                   s.get("gateway", ""), _seconds(s.get("timeout")), s.get("seller_id", ""))

    def _configured(self) -> bool:
        return bool(self.app_id and self.private_key and self.alipay_public_key)

    def _require(self) -> None:
        if not self._configured():
            raise ChannelError("alipay channel is not configured")

    def _sign(self, params: dict) -> str:
        try:
            return rsa.sign(self.private_key, content_to_sign(params))
        except (ValueError, TypeError, AttributeError):
            raise ChannelError("alipay app private key is not a usable PEM RSA key") from None

    def _common(self, method: str) -> dict:
        return {"app_id": self.app_id, "method": method, "format": "JSON", "charset": "utf-8", "sign_type": "RSA2",
                "timestamp": china_now().strftime(TIME_FORMAT), "version": "1.0"}

    # --- payments --------------------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        self._require()
        biz = {"out_trade_no": request.order_no, "product_code": "FAST_INSTANT_TRADE_PAY",
               "total_amount": yuan(request.amount), "subject": request.subject[:256]}
        if request.expires_at is not None:
            biz["time_expire"] = china_time(request.expires_at)
        params = {**self._common("alipay.trade.page.pay"), "notify_url": request.notify_url,
                  "return_url": request.return_url,
                  "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":"))}
        params = {k: v for k, v in params.items() if v not in (None, "")}
        params["sign"] = self._sign(params)
        separator = "&" if "?" in self.gateway else "?"
        return PaymentStart(pay_url=f"{self.gateway}{separator}{urlencode(params)}")

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification:
        if not self._configured():
            raise BadNotification("channel has no key: every notification is refused")
        signature = form.get("sign")
        if not signature or form.get("sign_type", "RSA2") != "RSA2":
            raise BadNotification("missing sign or unsupported sign_type")
        if not rsa.verify(self.alipay_public_key, content_to_sign(form, ("sign", "sign_type")), signature):
            raise BadNotification("bad signature")
        if form.get("app_id") != self.app_id:
            raise BadNotification("notification for another app_id")
        if self.seller_id and form.get("seller_id") != self.seller_id:
            raise BadNotification("notification for another seller_id")
        for name in ("out_trade_no", "trade_no", "total_amount", "trade_status"):
            if not form.get(name):
                raise BadNotification(f"missing {name}")
        try:
            amount = parse_yuan(form["total_amount"])
        except ValueError:
            raise BadNotification("total_amount is not an amount") from None
        return Notification(order_no=form["out_trade_no"], trade_no=form["trade_no"], amount=amount,
                            currency=form.get("trans_currency") or "CNY",  # cross-border: the priced currency
                            succeeded=form["trade_status"] in PAID_STATES, raw=dict(form))

    def success_answer(self) -> NotificationAnswer:
        return NotificationAnswer("success")

    def failure_answer(self, message: str) -> NotificationAnswer:
        return NotificationAnswer("failure", status=400)

    def query_payment(self, out_trade_no: str, meta: dict) -> TradeStatus:
        self._require()
        node = self._call("alipay.trade.query", {"out_trade_no": out_trade_no})
        if node.get("code") != SUCCESS:
            if node.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return TradeStatus("not_found", raw=node)
            raise self._failure("alipay.trade.query", node)
        if node.get("out_trade_no") not in (None, out_trade_no):
            raise ChannelUnavailable("alipay.trade.query answered for another out_trade_no")
        status = node.get("trade_status")
        if status in PAID_STATES:
            state = "paid"
        elif status == "WAIT_BUYER_PAY":
            state = "waiting"
        elif status == "TRADE_CLOSED":
            state = "refunded" if node.get("send_pay_date") else "closed"
        else:
            raise ChannelUnavailable(f"alipay.trade.query: unknown trade_status {status!r}")
        amount = None
        if state in ("paid", "refunded"):
            try:
                amount = parse_yuan(str(node.get("total_amount", "")))
            except ValueError:
                raise ChannelUnavailable("alipay.trade.query: total_amount is not an amount") from None
        return TradeStatus(state, trade_no=node.get("trade_no") or None, amount=amount,
                           currency=node.get("trans_currency") or "CNY", raw=node)

    def close_payment(self, out_trade_no: str, meta: dict) -> bool:
        self._require()
        node = self._call("alipay.trade.close", {"out_trade_no": out_trade_no})
        if node.get("code") == SUCCESS or node.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return True  # closed now, or never opened (the page pay's time_expire keeps it from opening later)
        if node.get("sub_code") in CLOSE_STATUS_ERRORS:
            state = self.query_payment(out_trade_no, meta).state
            if state in ("paid", "refunded"):
                return False
            if state in ("closed", "not_found"):
                return True
            raise ChannelUnavailable(f"alipay.trade.close refused a trade that is {state}")
        raise self._failure("alipay.trade.close", node)

    # --- refunds ---------------------------------------------------------------------------------------------

    def refund(self, request: RefundRequest) -> RefundResult:
        self._require()
        if request.amount <= 0:
            raise ChannelError("refund amount must be positive")
        biz = {"out_trade_no": request.out_trade_no, "refund_amount": yuan(request.amount),
               "out_request_no": request.out_refund_no, "refund_reason": (request.reason or "")[:256]}
        if request.trade_no:
            biz["trade_no"] = request.trade_no
        biz = {k: v for k, v in biz.items() if v}
        node = self._call("alipay.trade.refund", biz)  # ChannelUnavailable: unknown, retry the same out_refund_no
        if node.get("code") == SUCCESS:
            if node.get("out_trade_no") not in (None, request.out_trade_no):
                raise ChannelUnavailable("alipay.trade.refund answered for another out_trade_no")
            if node.get("fund_change") == "Y":
                return RefundResult("succeeded", message=f"fund_change=Y, refund_fee {node.get('refund_fee')}")
            confirmed = self.query_refund(request)  # a repeated out_request_no, or not paid out yet
            if confirmed.status != "processing":
                return confirmed
            return RefundResult("processing", message="fund_change=N and no successful refund yet: "
                                                      + confirmed.message)
        if is_unknown(node):
            raise ChannelUnavailable(f"alipay.trade.refund: outcome unknown ({describe(node)})")
        if node.get("sub_code") == "ACQ.SELLER_BALANCE_NOT_ENOUGH":
            return RefundResult("abnormal", message=f"{describe(node)}: nothing refunded; top up the Alipay "
                                                    "balance, then retry with the same out_refund_no")
        return RefundResult("failed", message=describe(node))

    def query_refund(self, request: RefundRequest) -> RefundResult:
        self._require()
        biz = {"out_trade_no": request.out_trade_no, "out_request_no": request.out_refund_no}
        if request.trade_no:
            biz["trade_no"] = request.trade_no
        try:
            node = self._call("alipay.trade.fastpay.refund.query", biz)
        except ChannelUnavailable as exc:
            return RefundResult("processing", message=str(exc))
        if node.get("code") != SUCCESS:
            if node.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return RefundResult("failed", message=describe(node))
            return RefundResult("processing", message=describe(node))
        status = node.get("refund_status")
        found = node.get("out_request_no") == request.out_refund_no and node.get("refund_amount")
        if status == "REFUND_SUCCESS" or (not status and found):
            try:
                refunded = parse_yuan(str(node.get("refund_amount", "")))
            except ValueError:
                return RefundResult("processing", message="refund_amount is not an amount")
            if refunded != request.amount:
                return RefundResult("abnormal", message=f"out_request_no {request.out_refund_no} refunded "
                                                        f"{node.get('refund_amount')}, not {yuan(request.amount)}")
            return RefundResult("succeeded", message="REFUND_SUCCESS")
        return RefundResult("processing", message="Alipay shows no successful refund for this out_request_no "
                                                  "(not received, not done yet, or failed): ask again, or call "
                                                  "refund() again with the same out_refund_no")

    def verify_refund_notification(self, headers, form: dict, body: bytes) -> RefundNotice:
        raise BadNotification("alipay sends no refund notifications")

    # --- statements ------------------------------------------------------------------------------------------

    def download_statement(self, day: date) -> list[StatementLine]:
        self._require()
        method = "alipay.data.dataservice.bill.downloadurl.query"
        node = self._call(method, {"bill_type": "trade", "bill_date": day.isoformat()})
        if node.get("code") != SUCCESS:
            if node.get("sub_code") == "isp.bill_not_exist":
                return []
            raise self._failure(method, node)
        url = node.get("bill_download_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ChannelUnavailable(f"{method}: no bill_download_url")
        try:
            with outbound.session(max_bytes=STATEMENT_MAX_BYTES, deadline=STATEMENT_DEADLINE_SECONDS) as session:
                response = session.get(url, timeout=self.timeout, allow_redirects=False)
        except outbound.FAILURES as exc:
            raise ChannelUnavailable(f"alipay bill download: {outbound.short_reason(exc)}") from None
        if response.status_code != 200 or not response.content.startswith(b"PK"):
            raise ChannelUnavailable(f"alipay bill download: HTTP {response.status_code}, not the bill zip "
                                     "(the URL lives 30 s)")
        try:
            detail = detail_csv(response.content)
        except ChannelError as exc:
            raise ChannelUnavailable(f"alipay bill download: {exc}") from None
        return self.parse_statement(detail)

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """Alipay's trade bill (业务明细, GBK CSV; or the downloaded zip holding it): lines starting with '#' are
        notes; columns include 支付宝交易号, 商户订单号, 业务类型 (交易/退款), 订单金额（元）, 商家实收（元）."""
        if content[:4] == b"PK\x03\x04":
            content = detail_csv(content)
        text = _decode(content)
        rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].lstrip().startswith("#")]
        if not rows:
            return []
        header = [h.strip() for h in rows[0]]
        try:
            i_trade, i_order = header.index("支付宝交易号"), header.index("商户订单号")  # i18n-keep: data
            i_amount = header.index("订单金额（元）")  # i18n-keep: data
        except ValueError:
            # i18n-keep: data
            raise ChannelError("not an Alipay trade bill: missing 支付宝交易号/商户订单号/订单金额（元）") from None
        i_kind = header.index("业务类型") if "业务类型" in header else None  # i18n-keep: data
        i_received = header.index("商家实收（元）") if "商家实收（元）" in header else None  # i18n-keep: data
        lines = []
        for row in rows[1:]:
            cells = [c.strip().strip("\t").strip() for c in row]
            if len(cells) <= max(i_trade, i_order, i_amount) or not cells[i_trade]:
                continue
            kind = "refund" if i_kind is not None and "退款" in cells[i_kind] else "payment"  # i18n-keep: data
            amount_cell = cells[i_amount]
            if kind == "refund" and i_received is not None and len(cells) > i_received and cells[i_received]:
                amount_cell = cells[i_received]
            try:
                amount = abs(parse_yuan(amount_cell))
            except ValueError:
                raise ChannelError(f"bad amount {amount_cell!r} for {cells[i_trade]}") from None
            lines.append(StatementLine(cells[i_trade], cells[i_order], amount, kind))
        return lines

    # --- transport -------------------------------------------------------------------------------------------

    def _call(self, method: str, biz: dict) -> dict:
        """POST one API call and return its verified reply node (whatever its code)."""
        params = self._common(method)
        params["biz_content"] = json.dumps(biz, ensure_ascii=False, separators=(",", ":"))
        params["sign"] = self._sign(params)
        query = {k: v for k, v in params.items() if k != "biz_content"}
        try:
            with outbound.session() as session:
                response = session.post(self.gateway, params=query, data={"biz_content": params["biz_content"]},
                                        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
                                        timeout=self.timeout, allow_redirects=False)
        except outbound.FAILURES as exc:
            raise ChannelUnavailable(f"alipay {method}: {outbound.short_reason(exc)}") from None
        if response.status_code != 200:
            raise ChannelUnavailable(f"alipay {method}: HTTP {response.status_code}")
        try:
            text = response.content.decode("utf-8")
        except UnicodeDecodeError:
            raise ChannelUnavailable(f"alipay {method}: the answer is not UTF-8") from None
        return signed_node(text, method, self.alipay_public_key)

    @staticmethod
    def _failure(method: str, node: dict) -> ChannelError:
        if is_unknown(node):
            return ChannelUnavailable(f"{method}: outcome unknown ({describe(node)})")
        return ChannelError(f"{method} refused: {describe(node)}")


def detail_csv(zip_bytes: bytes) -> bytes:
    """The 业务明细.csv inside Alipay's bill zip (entry names are GBK without the UTF-8 flag)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except zipfile.BadZipFile:
        raise ChannelError("not a zip file") from None
    with archive:
        for info in archive.infolist():
            name = info.filename
            if not info.flag_bits & _UTF8_NAME_FLAG:
                name = name.encode("cp437").decode("gb18030", errors="replace")
            if name.endswith(DETAIL_SUFFIX):
                if info.file_size > MAX_BILL_BYTES:
                    raise ChannelError("bill detail file too large")
                return archive.read(info)
    raise ChannelError(f"the bill zip holds no *{DETAIL_SUFFIX}")


def _seconds(value) -> float | None:
    if value in (None, "") or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def _decode(content: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ChannelError("statement is neither UTF-8 nor GBK")

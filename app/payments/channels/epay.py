"""易支付 (epay, the "彩虹易支付" family's V1 protocol, MD5-signed): page pay through submit.php or a server-side
mapi.php call, the asynchronous notification, order query (api.php?act=order) and, where the provider offers it,
refunds (api.php?act=refund); otherwise a refund is marked for manual handling with an alert.

Protocol (what was confirmed, and where; "unconfirmed" = no source found):
- Many providers run the same PHP program, each at its own address: the gateway is a setting (no default). The
  merchant has a numeric `pid` and a shared `key` [E1 epay.config.php, epayapi.php].
- Signing [E1 lib/epay_core.function.php paraFilter/argSort/createLinkstring, lib/epay_submit.class.php]: every
  parameter except `sign`, `sign_type` and empty values, sorted by name (PHP ksort), joined as `k=v` with `&`
  (values unencoded); sign = lowercase hex md5(that string + KEY); `sign_type=MD5` is sent beside it. The SDK
  compares with `==`; we compare in constant time (hmac.compare_digest).
- submit.php (the buyer's browser): pid, type (alipay / wxpay / qqpay; blank: some providers let the buyer choose,
  [E3 KPay's notes]), out_trade_no, notify_url, return_url, name, money (yuan, at most 2 decimals), sitename, sign,
  sign_type [E1 epayapi.php]. The SDK builds a form with no method, i.e. a GET; we send a signed GET URL.
- mapi.php (server side, POST): the same plus clientip (the buyer's address) and device; answers JSON
  {"code": 1, "msg", "trade_no", "payurl" | "qrcode" | "urlscheme"}; code != 1 is a refusal [E2 code search:
  several clients, e.g. the TypeScript EpayOrderResponse types and the Python 易支付插件].
- Notification [E1 notify_url.php, lib/epay_notify.class.php]: the gateway calls notify_url with GET (query string)
  carrying pid, trade_no, out_trade_no, type, name, money, trade_status, sign, sign_type (providers may add buyer,
  param, api_trade_no...: all non-empty fields are signed); paid only on trade_status=TRADE_SUCCESS; the merchant
  answers the body `success` (anything else: the gateway retries; its schedule is unconfirmed). POST delivery is
  accepted too (some forks, [E2 "同时兼容 POST 表单"]). No timestamp or nonce: a replay is a duplicate of a
  recorded trade_no and changes nothing.
- api.php?act=order&pid=&key=&out_trade_no= (or trade_no) -> {"code": 1, "msg", "trade_no", "out_trade_no",
  "type", "pid", "addtime", "endtime", "name", "money", "status": 0 unpaid / 1 paid / 2 refunded / 3 frozen}
  [E2 EpayQueryOrderResponse (openapi-generated types), several Go/Python/JS clients]. The V1 query authenticates
  with the key itself and its answer is NOT signed: it is trusted only as far as the HTTPS connection (use an https
  gateway). An unknown order answers code -1 with a message; the wording varies by provider ("订单号不存在",
  "服务不存在或已完成": unconfirmed), so only a message containing 不存在 reads as not found, anything else is
  "unknown" (asked again later).
- api.php?act=refund (POST: pid, key, out_trade_no or trade_no, money) -> {"code": 1, "msg"} when refunded
  [E2 Java and TypeScript clients]. Not every provider has it (KPay: "不支持", refunds in its back office [E3]): the
  `refund_api` setting says whether ours does. V1 has no refund number, so a repeated call is NOT idempotent at
  the protocol level: before every refund call we ask act=order, and a status of 2 (refunded) settles it without
  a second call; an unknown outcome (timeout, 5xx) is asked again later by query first, never blindly repeated.
- No close API and no bill download in V1 (act=orders lists orders page by page; its fields are unconfirmed): an
  expired unpaid order cannot be closed at the provider (a payment that still arrives is refunded as a late
  payment), and reconciliation imports a CSV export (trade_no,out_trade_no,money) by hand.

Sources: [E1] 13845678/SDKproject (a copy of the epay V1 PHP SDK): lib/epay_core.function.php,
lib/epay_submit.class.php, lib/epay_notify.class.php, epayapi.php, notify_url.php. [E2] code search for
"api.php?act=order" / "act=refund" / "mapi.php" across public clients (query and refund field names agree across
them). [E3] KPay's "其他支持易支付的系统" notes (which calls a given provider supports).
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from urllib.parse import urlencode

from flask_babel import gettext

from app import outbound
from app.money import format_fen, parse_yuan
from app.payments.channels.base import (
    HTTP_TIMEOUT_SECONDS,
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

PAY_TYPES = ("", "alipay", "wxpay", "qqpay")
MODES = ("submit", "mapi")
PAID = "TRADE_SUCCESS"
QUERY_STATES = {0: "waiting", 1: "paid", 2: "refunded"}  # 3 (frozen) and anything else: unknown


def content_to_sign(params: dict) -> str:
    """k=v&... of every non-empty parameter but sign and sign_type, sorted by name [E1 paraFilter/argSort]."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in ("sign", "sign_type") and params[k] not in (None, ""))


def sign(params: dict, key: str) -> str:
    """lowercase hex md5(content_to_sign(params) + KEY)."""
    return hashlib.md5((content_to_sign(params) + key).encode("utf-8")).hexdigest()


def yuan(fen: int) -> str:
    """1250 -> '12.50': epay's money is yuan with two decimals."""
    return format_fen(int(fen), symbol=False).replace(",", "")


def strict_yuan(text: object) -> int:
    """'12.50' / '12.5' / '12' -> fen; ValueError for anything else (signs, symbols, spaces, 3 decimals)."""
    if not isinstance(text, str) or not text or not all(c.isdigit() or c == "." for c in text) \
            or text.count(".") > 1 or text.startswith(".") or text.endswith("."):
        raise ValueError(f"money {text!r} is not yuan with at most two decimals")
    return parse_yuan(text)


class EpayChannel:
    code = "epay"

    def __init__(self, pid: str, key: str, gateway: str, pay_type: str = "", mode: str = "submit",
                 refund_api: bool = False, sitename: str = "", timeout: float | None = None):
        self.pid = str(pid or "").strip()
        self.key = key or ""
        self.gateway = (gateway or "").strip()
        if self.gateway and not self.gateway.endswith("/"):
            self.gateway += "/"
        self.pay_type = pay_type if pay_type in PAY_TYPES else ""
        self.mode = mode if mode in MODES else "submit"
        self.refund_api = bool(refund_api)
        self.sitename = sitename or ""
        self.timeout = timeout if timeout and timeout > 0 else HTTP_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: dict | None) -> EpayChannel:
        """Settings: pid, key (secret), gateway (the provider's base URL, e.g. https://pay.example.com/), pay_type
        (alipay / wxpay / qqpay / blank), mode (submit / mapi), refund_api ("yes" when the provider refunds through
        api.php?act=refund), sitename, timeout (seconds)."""
        s = settings or {}
        timeout = s.get("timeout")
        try:
            timeout = float(timeout) if timeout not in (None, "") and not isinstance(timeout, bool) else None
        except (TypeError, ValueError):
            timeout = None
        return cls(s.get("pid", ""), s.get("key", ""), s.get("gateway", ""), s.get("pay_type", ""),
                   s.get("mode", "submit"), str(s.get("refund_api", "")).lower() in ("yes", "true", "1", "on"),
                   s.get("sitename", ""), timeout)

    def _configured(self) -> bool:
        return bool(self.pid and self.key and self.gateway.startswith(("http://", "https://")))

    def _require(self) -> None:
        if not self._configured():
            raise ChannelError(gettext("易支付未配置商户号、密钥或接口地址"))

    def _signed(self, params: dict) -> dict:
        params = {k: str(v) for k, v in params.items() if v not in (None, "")}
        params["sign"] = sign(params, self.key)
        params["sign_type"] = "MD5"
        return params

    # --- payments --------------------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        self._require()
        params = {"pid": self.pid, "type": self.pay_type, "out_trade_no": request.order_no,
                  "notify_url": request.notify_url, "return_url": request.return_url,
                  "name": request.subject[:127], "money": yuan(request.amount), "sitename": self.sitename}
        if self.mode == "submit":
            return PaymentStart(pay_url=f"{self.gateway}submit.php?{urlencode(self._signed(params))}")
        params.update(clientip=request.client_ip or "", device="pc")
        data = self._post("mapi.php", self._signed(params))
        if str(data.get("code")) != "1":
            raise ChannelError(gettext("易支付下单失败：%(value)s", value=str(data.get('msg') or '')[:120]))
        if isinstance(data.get("payurl"), str) and data["payurl"].startswith(("http://", "https://")):
            return PaymentStart(pay_url=data["payurl"], meta={"trade_no": str(data.get("trade_no") or "")})
        if isinstance(data.get("qrcode"), str) and data["qrcode"]:
            return PaymentStart(pay_url=f"/pay/epay/qr/{request.order_no}", code_url=data["qrcode"],
                                meta={"trade_no": str(data.get("trade_no") or "")})
        raise ChannelError(gettext("易支付下单未返回支付地址"))

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification:
        if not self._configured():
            raise BadNotification("channel has no key: every notification is refused")
        signature = form.get("sign")
        if not isinstance(signature, str) or not signature or form.get("sign_type", "MD5") != "MD5":
            raise BadNotification("missing sign or unsupported sign_type")
        expected = sign(form, self.key)
        if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode("utf-8", "replace")):
            raise BadNotification("bad signature")
        if str(form.get("pid", "")) != self.pid:
            raise BadNotification("notification for another pid")
        for name in ("out_trade_no", "trade_no", "money", "trade_status"):
            if not form.get(name):
                raise BadNotification(f"missing {name}")
        try:
            amount = strict_yuan(form["money"])
        except ValueError:
            raise BadNotification("money is not an amount") from None
        return Notification(order_no=form["out_trade_no"], trade_no=form["trade_no"], amount=amount,
                            currency="CNY",  # epay settles in CNY only: the protocol carries no currency
                            succeeded=form["trade_status"] == PAID, raw=dict(form))

    def success_answer(self) -> NotificationAnswer:
        return NotificationAnswer("success")

    def failure_answer(self, message: str) -> NotificationAnswer:
        return NotificationAnswer("fail", status=400)

    def query_payment(self, out_trade_no: str, meta: dict) -> TradeStatus:
        self._require()
        data = self._api("order", {"out_trade_no": out_trade_no})
        if str(data.get("code")) != "1":
            if "不存在" in str(data.get("msg") or ""):  # i18n-keep: data
                return TradeStatus("not_found", raw=_public(data))
            raise ChannelUnavailable(gettext("易支付查询失败：%(value)s", value=str(data.get('msg') or '')[:120]))
        if str(data.get("out_trade_no") or out_trade_no) != out_trade_no:
            raise ChannelUnavailable("epay act=order answered for another out_trade_no")
        try:
            state = QUERY_STATES[int(str(data.get("status")))]
        except (KeyError, ValueError):
            raise ChannelUnavailable(f"epay act=order: unknown status {data.get('status')!r}") from None
        amount = None
        if state in ("paid", "refunded"):
            try:
                amount = strict_yuan(str(data.get("money", "")))
            except ValueError:
                raise ChannelUnavailable("epay act=order: money is not an amount") from None
        return TradeStatus(state, trade_no=str(data.get("trade_no") or "") or None, amount=amount, raw=_public(data))

    def close_payment(self, out_trade_no: str, meta: dict) -> bool:
        """V1 has no close call: ask instead. Paid (or refunded) -> False; otherwise it stays payable at the provider
        and a payment that still arrives is refunded as a late payment (app.payments.service._settle)."""
        return self.query_payment(out_trade_no, meta).state not in ("paid", "refunded")

    # --- refunds ---------------------------------------------------------------------------------------------

    def refund(self, request: RefundRequest) -> RefundResult:
        self._require()
        if request.amount <= 0:
            raise ChannelError("refund amount must be positive")
        if not self.refund_api:
            # i18n-keep: data
            return RefundResult("manual", message="该易支付商户不支持接口退款：请在易支付商户后台原路退款，然后在退款"
                                                  "记录中「确认已退款」(no refund API: refund it in the provider's "
                                                  "back office, then confirm)")
        # No refund number in V1: ask first, so an earlier call whose answer was lost is never repeated.
        before = self.query_payment(request.out_trade_no, request.meta)  # ChannelUnavailable: ask again later
        if before.state == "refunded":
            # i18n-keep: data
            return RefundResult("succeeded", channel_refund_no=before.trade_no, message="status 2 (已退款)")
        if before.state != "paid":
            return RefundResult("failed", message=f"the provider shows this order as {before.state}")
        if before.amount is not None and request.amount > before.amount:
            return RefundResult("failed", message=f"refund {yuan(request.amount)} exceeds the paid "
                                                  f"{yuan(before.amount)}")
        fields = {"out_trade_no": request.out_trade_no, "money": yuan(request.amount)}
        if request.trade_no:
            fields["trade_no"] = request.trade_no
        data = self._api("refund", fields, post=True)  # ChannelUnavailable: unknown, the retry queries first
        if str(data.get("code")) == "1":
            return RefundResult("succeeded", channel_refund_no=request.trade_no or None,
                                message=str(data.get("msg") or "")[:200])
        after = self.query_payment(request.out_trade_no, request.meta)
        if after.state == "refunded":
            # i18n-keep: data
            return RefundResult("succeeded", channel_refund_no=after.trade_no, message="status 2 (已退款)")
        return RefundResult("failed", message=f"act=refund refused: {str(data.get('msg') or '')[:200]}")

    def query_refund(self, request: RefundRequest) -> RefundResult:
        state = self.query_payment(request.out_trade_no, request.meta).state
        if state == "refunded":
            return RefundResult("succeeded", message="status 2 (已退款)")  # i18n-keep: data
        return RefundResult("processing", message=f"the provider shows the order as {state}")

    def verify_refund_notification(self, headers, form: dict, body: bytes) -> RefundNotice:
        raise BadNotification("epay sends no refund notifications")

    # --- statements ------------------------------------------------------------------------------------------

    def download_statement(self, day) -> list[StatementLine]:
        raise ChannelError(gettext("易支付没有对账单下载接口：请导出 CSV（trade_no,out_trade_no,money）后手工导入"))

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """A provider's order export as CSV with a header naming trade_no, out_trade_no and money (yuan)."""
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = content.decode("gb18030", errors="replace")
        reader = csv.DictReader(io.StringIO(text))
        lines = []
        for n, row in enumerate(reader, start=2):
            try:
                lines.append(StatementLine(trade_no=row["trade_no"].strip(), order_no=row["out_trade_no"].strip(),
                                           amount=strict_yuan(row["money"].strip())))
            except (KeyError, ValueError, AttributeError):
                raise ChannelError(f"statement line {n} is not trade_no,out_trade_no,money") from None
        return lines

    # --- transport -------------------------------------------------------------------------------------------

    def _api(self, act: str, fields: dict, post: bool = False) -> dict:
        """api.php?act=...: V1 authenticates with pid and key as parameters (never logged: errors name the act)."""
        params = {"pid": self.pid, "key": self.key, **fields}
        try:
            with outbound.session() as session:
                if post:
                    response = session.post(f"{self.gateway}api.php", params={"act": act}, data=params,
                                             timeout=self.timeout, allow_redirects=False)
                else:
                    response = session.get(f"{self.gateway}api.php", params={"act": act, **params},
                                           timeout=self.timeout, allow_redirects=False)
        except outbound.FAILURES as exc:
            raise ChannelUnavailable(f"epay act={act}: {type(exc).__name__}") from None
        return self._json(response, f"act={act}")

    def _post(self, path: str, params: dict) -> dict:
        try:
            with outbound.session() as session:
                response = session.post(self.gateway + path, data=params, timeout=self.timeout,
                                        allow_redirects=False)
        except outbound.FAILURES as exc:
            raise ChannelUnavailable(f"epay {path}: {type(exc).__name__}") from None
        return self._json(response, path)

    @staticmethod
    def _json(response, what: str) -> dict:
        if response.status_code != 200:
            raise ChannelUnavailable(f"epay {what}: HTTP {response.status_code}")
        try:
            data = json.loads(response.content.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            raise ChannelUnavailable(f"epay {what}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise ChannelUnavailable(f"epay {what}: the answer is not a JSON object")
        return data


def _public(data: dict) -> dict:
    """What of an api.php answer may be stored (it never holds the key, but keep only what we read)."""
    return {k: data.get(k) for k in ("code", "msg", "trade_no", "out_trade_no", "status", "money", "type")
            if k in data}

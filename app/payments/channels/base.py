"""The channel interface: what every payment channel (sandbox, Alipay, WeChat Pay, UnionPay) does for the payments
service, in our terms (amounts in fen, our order or top-up number as `out_trade_no`).

A channel adapter speaks its gateway's published protocol and nothing else: it never touches the database. The
payments service (app.payments.service) and the refund state machine (app.payments.refunds) call it and book what
it answers. Every outbound call goes through the one outbound client, `app.outbound.session()` (global addresses only,
pinned, no redirects, no proxies from the environment, capped answers) with a timeout; a transport failure (timeout,
connection refused, a refused destination, 5xx, an unparseable or unsigned answer) is *unknown*, never success or
failure: the caller asks again with the same identifiers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

from app.errors import KamengError

HTTP_TIMEOUT_SECONDS = 10
# A day's bill can be far larger than an API answer (the outbound client's default cap is 1 MiB).
STATEMENT_MAX_BYTES = 64 * 1024 * 1024
STATEMENT_DEADLINE_SECONDS = 120


class ChannelError(KamengError):
    code = "channel_error"
    status = 400


class BadNotification(ChannelError):
    """Forged, altered, malformed or for another merchant: refused, nothing changes."""
    code = "bad_notification"


class ChannelUnavailable(ChannelError):
    """The gateway could not be asked or its answer could not be trusted (timeout, 5xx, bad signature): the
    outcome is unknown; ask again later with the same identifiers."""
    code = "channel_unavailable"
    status = 502


@dataclass(frozen=True)
class PaymentRequest:
    order_no: str  # our order or top-up number: the channel's out_trade_no / orderId
    amount: int  # fen
    subject: str
    notify_url: str  # where the channel POSTs the payment notification
    return_url: str  # where the buyer's browser goes after paying (page pay)
    expires_at: datetime | None = None  # naive UTC: the channel must refuse payment after this
    client_ip: str | None = None  # the buyer's address, for channels that want it (epay mapi.php clientip)


@dataclass(frozen=True)
class PaymentStart:
    pay_url: str  # where the buyer goes: a gateway URL, or our own page ("/pay/..." paths are ours)
    code_url: str | None = None  # WeChat native / Alipay precreate: the QR content
    form: dict | None = None  # UnionPay: fields the buyer's browser POSTs to pay_url (an auto-submitting form)
    meta: dict = field(default_factory=dict)  # what later calls need (UnionPay: txnTime); stored with the order


@dataclass(frozen=True)
class Notification:
    """A verified payment result, in our terms."""
    order_no: str
    trade_no: str
    amount: int  # fen
    currency: str
    succeeded: bool
    raw: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TradeStatus:
    """What the channel says of a payment when asked (query)."""
    state: str  # "paid", "waiting" (created, not paid), "closed" (closed unpaid), "refunded", "not_found"
    trade_no: str | None = None  # the channel's trade number once paid
    amount: int | None = None  # fen, what was paid
    currency: str = "CNY"
    raw: dict = field(default_factory=dict)

    def as_notification(self, order_no: str) -> Notification:
        """A paid (or since refunded) trade found by query, booked exactly as its notification would be."""
        return Notification(order_no=order_no, trade_no=self.trade_no or "", amount=self.amount or 0,
                            currency=self.currency, succeeded=self.state in ("paid", "refunded"),
                            raw={"source": "query", **self.raw})


@dataclass(frozen=True)
class RefundRequest:
    out_trade_no: str  # our number the payment was made under
    trade_no: str  # the channel's trade number of that payment
    out_refund_no: str  # ours, unique per refund, reused on every retry (the channel refunds it once)
    amount: int  # fen to refund
    total: int  # fen, the payment's amount
    reason: str
    notify_url: str  # refund notifications (WeChat Pay notify_url, UnionPay backUrl)
    meta: dict = field(default_factory=dict)  # the channel order's meta, plus what refund() returned before


@dataclass(frozen=True)
class RefundResult:
    status: str  # "succeeded", "processing" (ask again / wait for the notification), "failed" (nothing refunded,
    #              may be retried), "abnormal" (the channel took it but could not pay the buyer: needs staff),
    #              "manual" (the channel has no refund call: staff refund it in its back office, then confirm)
    channel_refund_no: str | None = None
    message: str = ""
    meta: dict = field(default_factory=dict)  # identifiers a later query needs (UnionPay: the refund's txnTime)


@dataclass(frozen=True)
class RefundNotice:
    """A verified refund notification (WeChat Pay REFUND.*, UnionPay refund back notification)."""
    out_refund_no: str
    status: str  # as RefundResult.status
    channel_refund_no: str | None = None
    amount: int | None = None
    raw: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NotificationAnswer:
    body: str
    status: int = 200
    content_type: str = "text/plain"


@dataclass(frozen=True)
class StatementLine:
    trade_no: str
    order_no: str
    amount: int  # fen
    kind: str = "payment"  # payment or refund


class Channel(Protocol):
    code: str

    def create_payment(self, request: PaymentRequest) -> PaymentStart: ...

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification: ...

    def success_answer(self) -> NotificationAnswer: ...

    def failure_answer(self, message: str) -> NotificationAnswer: ...

    def query_payment(self, out_trade_no: str, meta: dict) -> TradeStatus: ...

    def close_payment(self, out_trade_no: str, meta: dict) -> bool:
        """Close an unpaid channel order so it can no longer be paid. False when the channel says it is paid."""

    def refund(self, request: RefundRequest) -> RefundResult: ...

    def query_refund(self, request: RefundRequest) -> RefundResult: ...

    def verify_refund_notification(self, headers, form: dict, body: bytes) -> RefundNotice: ...

    def download_statement(self, day: date) -> list[StatementLine]:
        """The channel's bill of one China calendar day, fetched and parsed; [] when the channel has none."""

    def parse_statement(self, content: bytes) -> list[StatementLine]: ...

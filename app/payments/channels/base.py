"""The channel interface: create a payment, verify a notification, query, refund, parse a statement."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from app.errors import KamengError


class ChannelError(KamengError):
    code = "channel_error"
    status = 400


class BadNotification(ChannelError):
    """Forged, altered, malformed or for another merchant: refused, nothing changes."""
    code = "bad_notification"


@dataclass(frozen=True)
class PaymentRequest:
    order_no: str
    amount: int  # fen
    subject: str
    notify_url: str
    return_url: str


@dataclass(frozen=True)
class PaymentStart:
    pay_url: str  # where the buyer goes (cashier page, Alipay gateway URL, our QR page)
    code_url: str | None = None  # WeChat native: the QR content


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

    def parse_statement(self, content: bytes) -> list[StatementLine]: ...

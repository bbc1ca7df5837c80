"""The built-in sandbox channel: HMAC-SHA256 signed form notifications (DESIGN.md, "sandbox protocol").

The sandbox is this platform's own pretend channel, for the demo and tests outside production (the payments
service refuses it in production). No money exists behind it: its cashier pays by sending us a signed
notification, a refund is done the moment it is asked, and it has no remote order to query or close.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import time

from app.payments.channels.base import (
    BadNotification,
    ChannelError,
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

FIELDS = ("order_no", "trade_no", "amount", "currency", "status", "ts", "nonce")
MAX_AGE_SECONDS = 24 * 3600  # a notification is retried for a day at most


def sign(key: str, fields: dict) -> str:
    """lowercase hex HMAC-SHA256(key, k=v pairs of every field but sign, sorted by name, joined by &)."""
    message = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "sign")
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


class SandboxChannel:
    code = "sandbox"

    def __init__(self, key: str):
        self.key = key or ""

    @classmethod
    def from_settings(cls, settings: dict) -> SandboxChannel:
        return cls(settings.get("key", ""))

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        if not self.key:
            raise ChannelError("sandbox channel has no key configured")
        if request.order_no.startswith("T"):  # a wallet top-up
            return PaymentStart(pay_url=f"/pay/sandbox/cashier/topup/{request.order_no}")
        return PaymentStart(pay_url=f"/pay/sandbox/cashier/{request.order_no}")

    def query_payment(self, out_trade_no: str, meta: dict) -> TradeStatus:
        return TradeStatus("not_found")  # nothing remote: what we recorded is all there is

    def close_payment(self, out_trade_no: str, meta: dict) -> bool:
        return True

    def refund(self, request: RefundRequest) -> RefundResult:
        if not self.key:
            raise ChannelError("sandbox channel has no key configured")
        return RefundResult("succeeded", channel_refund_no="SBXR" + request.out_refund_no)

    def query_refund(self, request: RefundRequest) -> RefundResult:
        return self.refund(request)

    def verify_refund_notification(self, headers, form: dict, body: bytes) -> RefundNotice:
        raise BadNotification("the sandbox sends no refund notifications")

    def download_statement(self, day) -> list[StatementLine]:
        raise ChannelError("the sandbox has no statement to download (its daily run reads the notification log)")

    def verify_notification(self, headers, form: dict, body: bytes) -> Notification:
        if not self.key:
            raise BadNotification("channel has no key: every notification is refused")
        missing = [f for f in (*FIELDS, "sign") if not form.get(f)]
        if missing:
            raise BadNotification(f"missing field(s): {', '.join(missing)}")
        extra = set(form) - set(FIELDS) - {"sign"}
        if extra:
            raise BadNotification(f"unknown field(s): {', '.join(sorted(extra))}")
        fields = {k: form[k] for k in FIELDS}
        if not hmac.compare_digest(sign(self.key, fields).encode(), str(form["sign"]).lower().encode()):
            raise BadNotification("bad signature")
        if not fields["amount"].isdecimal() or not fields["ts"].isdecimal():
            raise BadNotification("amount and ts must be integers")
        if abs(time.time() - int(fields["ts"])) > MAX_AGE_SECONDS:
            raise BadNotification("notification too old")
        return Notification(order_no=fields["order_no"], trade_no=fields["trade_no"], amount=int(fields["amount"]),
                            currency=fields["currency"], succeeded=fields["status"] == "SUCCESS", raw=dict(form))

    def success_answer(self) -> NotificationAnswer:
        return NotificationAnswer("success")

    def failure_answer(self, message: str) -> NotificationAnswer:
        return NotificationAnswer(f"fail: {message}", status=400)

    def parse_statement(self, content: bytes) -> list[StatementLine]:
        """CSV with a header: trade_no,order_no,amount[,kind] (amount in fen)."""
        reader = csv.DictReader(io.StringIO(content.decode("utf-8-sig")))
        lines = []
        for n, row in enumerate(reader, start=2):
            try:
                lines.append(StatementLine(trade_no=row["trade_no"].strip(), order_no=row["order_no"].strip(),
                                           amount=int(row["amount"]), kind=(row.get("kind") or "payment").strip()))
            except (KeyError, ValueError, AttributeError):
                raise ChannelError(f"statement line {n} is not trade_no,order_no,amount") from None
        return lines

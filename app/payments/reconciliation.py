"""对账 (reconciliation): a channel's statement matched against our Payment rows for that channel.

A statement is parsed by its channel's `parse_statement` (sandbox CSV; Alipay's GBK trade bill; WeChat Pay's
trade bill) into lines (trade_no, order_no, amount, kind payment|refund). Each import writes one
StatementImport and one ReconciliationDifference per difference:

- `missing_here`: a payment in the statement with no Payment here under (channel, trade_no);
- `missing_there`: a Payment here, created within the statement's period, absent from the statement;
- `amount_differs`: both sides have it, with different amounts.

Refund lines (Alipay 业务类型 退款, WeChat 交易状态 REFUND, sandbox kind=refund) are matched against our channel
refunds (a Payment whose status is `refunded`, refunded by the journal `refund:<channel>:<trade_no>`), giving
`refund_missing_here`, `refund_missing_there` (only when the statement reports refunds at all, or the caller says
it does) and `refund_amount_differs`.

The period: an explicit statement day, which is a calendar day in China time (UTC+8, the channels' clock) turned
into our UTC timestamps, or else from the earliest to the latest created_at of the statement's payments found
here. A statement with no matching payment and no day has no period, so nothing is reported missing there.

Scheduled sandbox run: the sandbox channel is ours and has no remote statement to download. Its daily "statement"
is the log of what the channel told us: every PaymentNotification of the sandbox channel that passed verification
and said the payment succeeded (outcomes accepted, duplicate, the automatic refunds, amount_mismatch and
unknown_order), received during the previous China day. That log is matched against the Payment rows created
that day like any statement: a verified notification that left no payment (amount_mismatch, unknown_order) is
`missing_here`, a payment with no notification (confirmed by hand, or written by anything but the notification
path) is `missing_there`. Re-running a day replaces that day's scheduled import, so the job is idempotent.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta

from flask_babel import gettext, lazy_gettext
from sqlalchemy import delete, select

from app.clock import utcnow
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.ledger.models import Journal
from app.payments.channels.base import StatementLine
from app.payments.models import Payment, PaymentNotification, ReconciliationDifference, StatementImport, WalletTopUp

CHANNEL_UTC_OFFSET = timedelta(hours=8)  # statements are dated in China time
KIND_NAMES = {
    "missing_here": lazy_gettext("我方缺失（渠道有，我方无）"),
    "missing_there": lazy_gettext("渠道缺失（我方有，渠道无）"),
    "amount_differs": lazy_gettext("金额不一致"),
    "refund_missing_here": lazy_gettext("退款：我方缺失"),
    "refund_missing_there": lazy_gettext("退款：渠道缺失"),
    "refund_amount_differs": lazy_gettext("退款：金额不一致"),
}
# Outcomes of a sandbox notification that was verified and said SUCCESS: the channel says it collected the money.
SANDBOX_COLLECTED = ("accepted", "duplicate", "late_refunded", "double_paid_refunded", "out_of_stock_refunded",
                     "amount_mismatch", "unknown_order")
MAX_STATEMENT_BYTES = 20 * 1024 * 1024


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """A China calendar day as [start, end) in our naive UTC timestamps."""
    start = datetime.combine(day, time.min) - CHANNEL_UTC_OFFSET
    return start, start + timedelta(days=1)


def china_today() -> date:
    return (utcnow() + CHANNEL_UTC_OFFSET).date()


def parse_day(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(gettext("日期格式应为 YYYY-MM-DD")) from None


def import_statement(channel: str, content: bytes, filename: str | None = None, day: date | None = None,
                     actor_id: int | None = None, refunds: bool | None = None) -> StatementImport:
    """Parse a statement with its channel's parser and reconcile it; commits. Raises ValidationError/ChannelError
    (nothing written) when the file is not that channel's statement."""
    from app.payments import service

    if channel not in service.CHANNEL_CODES:
        raise NotFound(f"unknown payment channel {channel!r}")
    if not content:
        raise ValidationError(gettext("对账单为空"))
    if len(content) > MAX_STATEMENT_BYTES:
        raise ValidationError(gettext("对账单过大"))
    gateway = service.get_channel(channel)
    try:
        lines = gateway.parse_statement(content)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(gettext("无法解析对账单：%(error)s", error=exc)[:255]) from None
    db.session.rollback()  # get_channel may have created the channel row: this import starts clean
    period = day_bounds(day) if day else None
    return reconcile(channel, lines, period=period, filename=filename, source="upload", actor_id=actor_id,
                     refunds=refunds)


def reconcile(channel: str, lines: list[StatementLine], period: tuple[datetime, datetime] | None = None,
              filename: str | None = None, source: str = "upload", actor_id: int | None = None,
              refunds: bool | None = None, into: StatementImport | None = None) -> StatementImport:
    """Match statement lines against our payments of `channel`; write the import and its differences; commit.

    `period` is [start, end) in our timestamps; None derives it from the matched payments (inclusive bounds).
    """
    pay_lines: dict[str, StatementLine] = {}
    refund_lines: dict[str, StatementLine] = {}
    for line in lines:
        target = refund_lines if line.kind == "refund" else pay_lines
        if line.trade_no in target:  # the same trade twice in one statement: count it once, add the amounts
            first = target[line.trade_no]
            target[line.trade_no] = StatementLine(first.trade_no, first.order_no, first.amount + line.amount,
                                                  first.kind)
        else:
            target[line.trade_no] = line
    if refunds is None:
        refunds = bool(refund_lines)

    ours = _payments(channel, set(pay_lines) | set(refund_lines))
    diffs: list[dict] = []
    matched = 0
    for trade_no, line in pay_lines.items():
        payment = ours.get(trade_no)
        if payment is None:
            diffs.append(_diff("missing_here", line.trade_no, line.order_no, line.amount, None))
        elif payment["amount"] != line.amount:
            diffs.append(_diff("amount_differs", trade_no, payment["number"] or line.order_no, line.amount,
                               payment["amount"]))
        else:
            matched += 1

    if period is None:
        found = [ours[t]["created_at"] for t in pay_lines if t in ours]
        if found:
            start, end = min(found), max(found)
            period = (start, end + timedelta(microseconds=1))
    if period is not None:
        for payment in _payments_in(channel, period, exclude=set(pay_lines)):
            diffs.append(_diff("missing_there", payment["trade_no"], payment["number"], None, payment["amount"]))

    refunded = {t: p for t, p in ours.items() if p["status"] == "refunded"}
    for trade_no, line in refund_lines.items():
        payment = refunded.get(trade_no)
        if payment is None:
            diffs.append(_diff("refund_missing_here", trade_no, line.order_no, line.amount, None))
        elif payment["amount"] != line.amount:
            diffs.append(_diff("refund_amount_differs", trade_no, payment["number"] or line.order_no, line.amount,
                               payment["amount"]))
        else:
            matched += 1
    if refunds and period is not None:
        for payment in _refunds_in(channel, period, exclude=set(refund_lines)):
            diffs.append(_diff("refund_missing_there", payment["trade_no"], payment["number"], None,
                               payment["amount"]))

    row = into or StatementImport(channel=channel)
    if into is None:
        db.session.add(row)
    row.filename = (filename or "")[:255] or None
    row.source = source
    row.lines = len(lines)
    row.matched = matched
    row.differences = len(diffs)
    row.period_start, row.period_end = period if period else (None, None)
    row.imported_by_id = actor_id
    row.created_at = utcnow()
    db.session.flush()
    db.session.execute(delete(ReconciliationDifference).where(ReconciliationDifference.import_id == row.id))
    db.session.add_all(ReconciliationDifference(import_id=row.id, **d) for d in diffs)
    db.session.commit()
    return row


def _diff(kind: str, trade_no, order_no, statement_amount, our_amount) -> dict:
    return {"kind": kind, "trade_no": (trade_no or "")[:64] or None, "order_no": (order_no or "")[:40] or None,
            "statement_amount": statement_amount, "our_amount": our_amount}


def _payment_query():
    from app.orders.models import Order

    return (select(Payment.trade_no, Payment.amount, Payment.status, Payment.created_at, Order.order_no,
                   WalletTopUp.topup_no)
            .outerjoin(Order, Order.id == Payment.order_id).outerjoin(WalletTopUp, WalletTopUp.id == Payment.topup_id))


def _row(r) -> dict:
    return {"trade_no": r.trade_no, "amount": r.amount, "status": r.status, "created_at": r.created_at,
            "number": r.order_no or r.topup_no}


def _payments(channel: str, trade_nos: set[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    ordered = sorted(trade_nos)
    for i in range(0, len(ordered), 1000):
        chunk = ordered[i:i + 1000]
        for r in db.session.execute(_payment_query().where(Payment.channel == channel, Payment.trade_no.in_(chunk))):
            found[r.trade_no] = _row(r)
    return found


def _payments_in(channel: str, period: tuple[datetime, datetime], exclude: set[str]) -> list[dict]:
    rows = db.session.execute(_payment_query().where(Payment.channel == channel, Payment.created_at >= period[0],
                                                     Payment.created_at < period[1]).order_by(Payment.id))
    return [_row(r) for r in rows if r.trade_no not in exclude]


def _refunds_in(channel: str, period: tuple[datetime, datetime], exclude: set[str]) -> list[dict]:
    """Our channel refunds booked within the period (the refund journal's time), not in the statement."""
    prefix = f"refund:{channel}:"
    keys = db.session.scalars(select(Journal.idempotency_key).where(
        Journal.idempotency_key.like(prefix + "%"), Journal.created_at >= period[0], Journal.created_at < period[1]))
    trade_nos = {k[len(prefix):] for k in keys} - exclude
    return sorted(_payments(channel, trade_nos).values(), key=lambda p: p["trade_no"])


# --- the scheduled sandbox run -----------------------------------------------------------------------------

def sandbox_log_lines(period: tuple[datetime, datetime]) -> list[StatementLine]:
    """What the sandbox channel told us it collected in the period: verified SUCCESS notifications, one a trade."""
    rows = db.session.execute(
        select(PaymentNotification.trade_no, PaymentNotification.order_no, PaymentNotification.amount)
        .where(PaymentNotification.channel == "sandbox", PaymentNotification.outcome.in_(SANDBOX_COLLECTED),
               PaymentNotification.trade_no.is_not(None), PaymentNotification.amount.is_not(None),
               PaymentNotification.created_at >= period[0], PaymentNotification.created_at < period[1])
        .order_by(PaymentNotification.id))
    seen: dict[str, StatementLine] = {}
    for r in rows:
        seen.setdefault(r.trade_no, StatementLine(r.trade_no, r.order_no or "", r.amount, "payment"))
    return list(seen.values())


def run_sandbox_daily(day: date | None = None) -> dict:
    """Reconcile one China day (default: yesterday) of the sandbox channel; replaces that day's scheduled run."""
    day = day or (china_today() - timedelta(days=1))
    period = day_bounds(day)
    lines = sandbox_log_lines(period)
    existing = db.session.scalar(select(StatementImport).where(
        StatementImport.channel == "sandbox", StatementImport.source == "scheduled",
        StatementImport.period_start == period[0]).order_by(StatementImport.id).limit(1))
    row = reconcile("sandbox", lines, period=period, filename=f"sandbox-notifications-{day.isoformat()}",
                    source="scheduled", refunds=False, into=existing)
    return {"import_id": row.id, "day": day.isoformat(), "lines": row.lines, "matched": row.matched,
            "differences": row.differences}


def run_channel_daily(channel: str, day: date | None = None) -> dict:
    """Download one China day's bill (default: yesterday) from a real channel and reconcile it; replaces that
    day's scheduled run of the channel. Raises ChannelError (nothing written) when the bill cannot be fetched."""
    from app.payments import service

    day = day or (china_today() - timedelta(days=1))
    period = day_bounds(day)
    lines = service.get_channel(channel).download_statement(day)
    db.session.rollback()
    existing = db.session.scalar(select(StatementImport).where(
        StatementImport.channel == channel, StatementImport.source == "scheduled",
        StatementImport.period_start == period[0]).order_by(StatementImport.id).limit(1))
    row = reconcile(channel, lines, period=period, filename=f"{channel}-bill-{day.isoformat()}", source="scheduled",
                    refunds=True, into=existing)
    return {"import_id": row.id, "channel": channel, "day": day.isoformat(), "lines": row.lines,
            "matched": row.matched, "differences": row.differences}


def run_daily(day: date | None = None) -> dict:
    """The daily reconciliation of every enabled channel: the sandbox from its notification log, the others from
    the bill each downloads itself. A channel whose bill cannot be fetched is reported and retried next run."""
    from app.errors import KamengError
    from app.payments import service

    report: dict[str, dict] = {}
    for channel in service.enabled_channels():
        try:
            report[channel] = run_sandbox_daily(day) if channel == "sandbox" else run_channel_daily(channel, day)
        except KamengError as exc:
            db.session.rollback()
            report[channel] = {"error": exc.message}
    return report


def summary(row: StatementImport) -> dict:
    counts: dict[str, int] = {}
    for kind in db.session.scalars(select(ReconciliationDifference.kind)
                                   .where(ReconciliationDifference.import_id == row.id)):
        counts[kind] = counts.get(kind, 0) + 1
    return {"import_id": row.id, "channel": row.channel, "lines": row.lines, "matched": row.matched,
            "differences": row.differences, "by_kind": counts,
            "period_start": row.period_start.isoformat() if row.period_start else None,
            "period_end": row.period_end.isoformat() if row.period_end else None}

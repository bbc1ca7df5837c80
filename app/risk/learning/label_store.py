"""Labels (风控标注): every outcome that says whether a decision was about fraud becomes one row per subject.

Sources: a review approved (legitimate) or rejected (fraud; an automatic rejection for want of a decision teaches
nothing and is not recorded), a refund whose reason names fraud (欺诈 / fraud), a dispute lost (the buyer got the
money back: refund abuse), a decision blocked by a list hit. The subject is the order (`order:<no>`), or the decision
when there is no order (`decision:<id>`); a repeat of an event changes nothing, and fraud replaces an earlier
legitimate label (an approved order charged back later), never the other way round. Each label keeps the decision
whose features are learnt from and that decision's time, which the time split orders by.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select

from app.clock import utcnow
from app.extensions import db
from app.risk.models import RiskDecision, RiskLabel
from app.rows import dialect_insert

FRAUD, LEGIT = 1, 0
FRAUD_WORDS = ("欺诈", "fraud")  # i18n-keep: words matched in refund reasons staff typed


def record(subject: str, label: int, source: str, at: datetime, decision_id: int | None = None,
           order_no: str | None = None, decided_at: datetime | None = None) -> None:
    """Upsert one label in the caller's transaction (fraud wins over legitimate; a repeat is a no-op)."""
    statement = dialect_insert(RiskLabel.__table__).values(
        subject=subject[:80], label=int(label), source=source, at=at, decision_id=decision_id, order_no=order_no,
        decided_at=decided_at, created_at=utcnow())
    table = RiskLabel.__table__
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.subject],
        set_={"label": statement.excluded.label, "source": statement.excluded.source, "at": statement.excluded.at},
        where=table.c.label < statement.excluded.label)
    db.session.execute(statement)


def decision_of_order(order) -> tuple[int | None, datetime | None]:
    """The decision an order's label teaches from: its checkout's, else the first one naming it."""
    decision_id = order.risk_decision_id
    if decision_id is None:
        decision_id = db.session.scalar(select(func.min(RiskDecision.id))
                                        .where(RiskDecision.order_no == order.order_no))
    if decision_id is None:
        return None, None
    return decision_id, db.session.scalar(select(RiskDecision.created_at).where(RiskDecision.id == decision_id))


def label_order(order, label: int, source: str, at: datetime | None = None) -> None:
    decision_id, decided_at = decision_of_order(order)
    record(f"order:{order.order_no}", label, source, at or utcnow(), decision_id, order.order_no, decided_at)


def collect(since: datetime | None = None) -> dict[str, int]:
    """Labels from refunds named as fraud, lost disputes and list blocks (since a time, or all); idempotent.
    Reviews label themselves when they are decided (app.risk.reviews). Caller commits."""
    from app.orders.models import Order
    from app.payments.models import Dispute, Refund

    counts = {"refund_fraud": 0, "dispute_lost": 0, "list_block": 0}
    refunds = select(Order, Refund.created_at).join(Refund, Refund.order_id == Order.id).where(
        or_(*(func.lower(Refund.reason).contains(word) for word in FRAUD_WORDS)))
    disputes = select(Order, Dispute.resolved_at).join(Dispute, Dispute.order_id == Order.id).where(
        Dispute.status == "refunded")
    if since is not None:
        refunds = refunds.where(Refund.created_at >= since)
        disputes = disputes.where(Dispute.resolved_at >= since)
    for source, rows in (("refund_fraud", refunds), ("dispute_lost", disputes)):
        for order, at in db.session.execute(rows).all():
            label_order(order, FRAUD, source, at)
            counts[source] += 1
    blocks = select(RiskDecision.id, RiskDecision.created_at, RiskDecision.order_no).where(
        RiskDecision.outcome == "block", RiskDecision.stage == "list")
    if since is not None:
        blocks = blocks.where(RiskDecision.created_at >= since)
    for decision_id, created_at, order_no in db.session.execute(blocks).all():
        record(f"decision:{decision_id}", FRAUD, "list_block", created_at, decision_id, order_no, created_at)
        counts["list_block"] += 1
    return counts


def counts() -> dict[str, int]:
    """Labels per source and value, for the CLI and the screens."""
    return {f"{source}:{label}": int(n) for source, label, n in db.session.execute(
        select(RiskLabel.source, RiskLabel.label, func.count()).group_by(RiskLabel.source, RiskLabel.label))}

"""The alert rules: what each kind looks at, read from the rows the other domains already keep.

Each evaluator returns what is wrong right now, as Findings (a key and its facts); the service opens an alert for
a key newly found, updates one still found, and resolves an open alert of that kind whose key is no longer found.
So a condition is told once while it lasts, and once more when it ends, however often the job runs.

Facts are what a message may say: product and supplier names, counts, amounts in fen, order and refund numbers,
channel codes, job function names. Never a card secret, a key, a contact, an account topped up, an address or an
error text from elsewhere (an upstream's or a server's error may echo personal data): evaluators pick fields.

Kinds (key; threshold and window defaults in brackets):
- low_stock: open restock alerts (补货提醒, app.catalog cards scan and app.suppliers.sync); low_stock:<product>.
- supplier_balance: open low-balance alerts (供应商余额提醒, app.suppliers.sync); supplier_balance:<supplier>.
- topup_unknown: direct top-up attempts whose result is unknown for N minutes [RECHARGE_UNKNOWN_ALERT_MINUTES];
  topup_unknown:<supplier>.
- topup_late: attempts still submitting / submitted / processing after N minutes [30]; topup_late:<supplier>.
- delivery_sla: orders paid and not delivered N minutes after payment [15]; delivery_sla.
- payment_mismatch: payment or refund notifications whose amount did not match, in the window [60 min];
  payment_mismatch:<channel>.
- reconciliation: the latest reconciliation of a channel's day shows differences, days within N [30];
  reconciliation:<channel>:<day> (or :import-<id> for a statement without a day).
- refund_failed: refunds failed (refused, abnormal, to refund by hand) or unanswered N times
  [REFUND_ALERT_ATTEMPTS]; refund_failed:<refund>.
- job_failed: jobs in RQ's failed registries, until retried or expired; job_failed:<queue>:<function>.
- risk_spike: risk decisions held or blocked in the window reach N, and it ends below N/2 [50 in 10 min];
  risk_spike.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import func, select

from app.extensions import db

SAMPLE = 5  # order numbers or job ids a message lists at most
JOB_SAMPLE = 200  # failed jobs read per queue and evaluation


@dataclass(frozen=True)
class Finding:
    key: str
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RuleConfig:
    kind: str
    severity: str
    threshold: int | None
    window_minutes: int | None


@dataclass(frozen=True)
class RuleSpec:
    kind: str
    severity: str
    evaluate: Callable[[RuleConfig, datetime, set[str]], list[Finding]]
    threshold: Callable[[], int | None] = lambda: None  # the default when the rule's row has none
    window: int | None = None


def _cfg(name: str, default: int) -> int:
    return int(current_app.config.get(name) or default)


# --- evaluators --------------------------------------------------------------------------------------------------

def low_stock(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    from app.catalog.models import Product, StockAlert

    rows = db.session.execute(
        select(StockAlert.product_id, Product.name, Product.kind, StockAlert.available, StockAlert.threshold)
        .join(Product, Product.id == StockAlert.product_id)
        .where(StockAlert.resolved_at.is_(None)).order_by(StockAlert.product_id)).all()
    return [Finding(f"low_stock:{r.product_id}", {"product": r.name, "product_kind": r.kind,
                                                  "available": r.available, "threshold": r.threshold})
            for r in rows]


def supplier_balance(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    from app.catalog.models import Supplier
    from app.suppliers.models import SupplierAlert

    rows = db.session.execute(
        select(SupplierAlert.supplier_id, Supplier.name, SupplierAlert.value, SupplierAlert.threshold)
        .join(Supplier, Supplier.id == SupplierAlert.supplier_id)
        .where(SupplierAlert.resolved_at.is_(None), SupplierAlert.kind == "low_balance")
        .order_by(SupplierAlert.supplier_id, SupplierAlert.id)).all()
    found = {}
    for r in rows:  # one per supplier (the sync keeps one open; an older duplicate would only repeat it)
        found[r.supplier_id] = Finding(f"supplier_balance:{r.supplier_id}",
                                       {"supplier": r.name, "balance": r.value, "threshold": r.threshold})
    return list(found.values())


def _attempts_by_supplier(kind: str, statuses: tuple[str, ...], minutes: int, now: datetime) -> list[Finding]:
    from app.catalog.models import Supplier
    from app.orders.models import Order
    from app.suppliers.models import RechargeAttempt

    rows = db.session.execute(
        select(RechargeAttempt.supplier_id, Supplier.name, Order.order_no)
        .join(Supplier, Supplier.id == RechargeAttempt.supplier_id)
        .join(Order, Order.id == RechargeAttempt.order_id)
        .where(RechargeAttempt.status.in_(statuses), RechargeAttempt.created_at < now - timedelta(minutes=minutes))
        .order_by(RechargeAttempt.supplier_id, RechargeAttempt.created_at)).all()
    grouped: dict[int, list] = defaultdict(list)
    names = {}
    for r in rows:
        grouped[r.supplier_id].append(r.order_no)
        names[r.supplier_id] = r.name
    return [Finding(f"{kind}:{sid}", {"supplier": names[sid], "count": len(orders), "minutes": minutes,
                                      "orders": orders[:SAMPLE]})
            for sid, orders in grouped.items()]


def topup_unknown(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    return _attempts_by_supplier("topup_unknown", ("unknown",), rule.threshold or 30, now)


def topup_late(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    return _attempts_by_supplier("topup_late", ("submitting", "submitted", "processing"), rule.threshold or 30, now)


def delivery_sla(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    from app.orders.models import Order

    minutes = rule.threshold or 15
    late = (Order.status.in_(("paid", "delivering")), Order.paid_at.is_not(None),
            Order.paid_at < now - timedelta(minutes=minutes))
    count = db.session.scalar(select(func.count()).select_from(Order).where(*late)) or 0
    if not count:
        return []
    orders = list(db.session.scalars(select(Order.order_no).where(*late).order_by(Order.paid_at).limit(SAMPLE)))
    return [Finding("delivery_sla", {"count": count, "minutes": minutes, "orders": orders})]


def payment_mismatch(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    from app.payments.models import PaymentNotification

    window = rule.window_minutes or 60
    rows = db.session.execute(
        select(PaymentNotification.channel, PaymentNotification.order_no, PaymentNotification.outcome)
        .where(PaymentNotification.outcome.in_(("amount_mismatch", "refund_amount_mismatch")),
               PaymentNotification.created_at >= now - timedelta(minutes=window))
        .order_by(PaymentNotification.id)).all()
    grouped: dict[str, list] = defaultdict(list)
    for r in rows:
        grouped[r.channel].append(r.order_no or "-")
    return [Finding(f"payment_mismatch:{channel}", {"channel": channel, "count": len(orders), "window": window,
                                                    "orders": orders[-SAMPLE:]})
            for channel, orders in grouped.items()]


def reconciliation(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    from app.payments.models import StatementImport
    from app.payments.reconciliation import CHANNEL_UTC_OFFSET

    days = rule.threshold or 30
    imports = db.session.execute(
        select(StatementImport.id, StatementImport.channel, StatementImport.period_start, StatementImport.differences)
        .where(StatementImport.created_at >= now - timedelta(days=days)).order_by(StatementImport.id)).all()
    latest: dict[str, dict] = {}
    for row in imports:  # a later import of the same channel and day replaces the earlier one's verdict
        day = (row.period_start + CHANNEL_UTC_OFFSET).date().isoformat() if row.period_start else None
        key = f"reconciliation:{row.channel}:{day or 'import-' + str(row.id)}"
        latest[key] = {"channel": row.channel, "day": day, "count": row.differences, "import_id": row.id}
    return [Finding(key, facts) for key, facts in latest.items() if facts["count"]]


def refund_failed(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    from app.orders.models import Order
    from app.payments import refunds
    from app.payments.models import Refund

    attempts = rule.threshold or _cfg("REFUND_ALERT_ATTEMPTS", 6)
    rows = db.session.scalars(
        select(Refund).where((Refund.status == "failed")
                             | (Refund.status.in_(refunds.OPEN_STATUSES) & (Refund.attempts >= attempts)))
        .order_by(Refund.id)).all()
    order_nos = dict(db.session.execute(select(Order.id, Order.order_no).where(
        Order.id.in_([r.order_id for r in rows if r.order_id]))).all()) if rows else {}
    found = []
    for refund in rows:
        if refund.status == "failed":
            state = ("manual" if refunds.is_manual(refund) else "abnormal" if refunds.is_abnormal(refund)
                     else "failed")
        else:
            state = "stuck"
        found.append(Finding(f"refund_failed:{refund.id}", {
            "state": state, "channel": refund.destination, "amount": refund.amount,
            "order_no": order_nos.get(refund.order_id) or "-", "refund_no": refund.out_refund_no or "-",
            "attempts": refund.attempts}))
    return found


def job_failed(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    """RQ's failed registries (none without Redis: jobs then run inline and a failure is the request's error).
    A job stays failed until it is retried (任务队列) or expires (failure_ttl): the alert lasts as long."""
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    from app.queueing import QUEUES, get_queue, redis_connection

    connection = redis_connection()
    if connection is None:
        return []
    found = []
    for name in QUEUES:
        registry = FailedJobRegistry(queue=get_queue(name))
        # The newest JOB_SAMPLE failures are read (one round trip): a burst of thousands stays cheap to evaluate
        # every minute; a function failing only beyond them is found once the newer ones are retried.
        ids = registry.get_job_ids(0, JOB_SAMPLE - 1, desc=True)
        grouped: dict[str, list[str]] = defaultdict(list)
        for job_id, job in zip(ids, Job.fetch_many(ids, connection=connection), strict=True):
            try:
                function = (job.func_name if job is not None else None) or "?"
            except Exception:  # data that no longer unpickles: still a failed job
                function = "?"
            grouped[function.rsplit(".", 1)[-1]].append(job_id)
        found += [Finding(f"job_failed:{name}:{function}", {"queue": name, "function": function,
                                                             "count": len(ids), "jobs": ids[:3]})
                  for function, ids in sorted(grouped.items())]
    return found


def risk_spike(rule: RuleConfig, now: datetime, open_keys: set[str]) -> list[Finding]:
    from app.risk.models import RiskDecision

    window = rule.window_minutes or 10
    threshold = rule.threshold or 50
    counts = dict(db.session.execute(
        select(RiskDecision.outcome, func.count()).where(
            RiskDecision.outcome.in_(("block", "review")),
            RiskDecision.created_at >= now - timedelta(minutes=window)).group_by(RiskDecision.outcome)).all())
    total = sum(counts.values())
    # Hysteresis: it opens at the threshold and ends only below half of it, so a count hovering at the threshold
    # does not tell the group "spike, recovered, spike" every minute.
    limit = (threshold + 1) // 2 if "risk_spike" in open_keys else threshold
    if total < limit:
        return []
    return [Finding("risk_spike", {"count": total, "blocks": counts.get("block", 0),
                                   "reviews": counts.get("review", 0), "window": window, "threshold": threshold})]


RULES: dict[str, RuleSpec] = {spec.kind: spec for spec in (
    RuleSpec("low_stock", "warning", low_stock),
    RuleSpec("supplier_balance", "critical", supplier_balance),
    RuleSpec("topup_unknown", "critical", topup_unknown, lambda: _cfg("RECHARGE_UNKNOWN_ALERT_MINUTES", 30)),
    RuleSpec("topup_late", "warning", topup_late, lambda: 30),
    RuleSpec("delivery_sla", "warning", delivery_sla, lambda: 15),
    RuleSpec("payment_mismatch", "critical", payment_mismatch, window=60),
    RuleSpec("reconciliation", "warning", reconciliation, lambda: 30),
    RuleSpec("refund_failed", "critical", refund_failed, lambda: _cfg("REFUND_ALERT_ATTEMPTS", 6)),
    RuleSpec("job_failed", "warning", job_failed),
    RuleSpec("risk_spike", "warning", risk_spike, lambda: 50, window=10),
)}


def facts_json(facts: dict) -> str:
    return json.dumps(facts, ensure_ascii=False, sort_keys=True, default=str)

"""Job functions: take ids, run inside the Flask app, call one service. Idempotent on database state."""
from __future__ import annotations

import logging

from app.catalog import cards
from app.queueing import register_jobs
from workers.queues import report_progress


def import_cards(import_id: int) -> dict:
    """Large card-secret imports (more than CARD_IMPORT_JOB_THRESHOLD lines) run here, on the low queue."""
    return cards.run_import(import_id, progress=report_progress)


# An import that ran inline (a web request, the CLI) and is still queued or running after this long was cut off.
IMPORT_STALL_AFTER_MINUTES = 10


def resume_imports() -> list[int]:
    """Scheduled: card imports a dead process left queued or running (a worker or web process killed mid-import,
    Redis restarted and lost the job) run again. run_import carries on where it stopped: the chunks already
    committed conflict on (product, secret hash) and are counted once, so the batch ends with each line once.
    An import whose job RQ still has queued or running is left alone. Returns the ids resumed."""
    from datetime import timedelta

    from sqlalchemy import select

    from app.catalog.models import CardImport
    from app.clock import utcnow
    from app.extensions import db
    from workers.queues import enqueue

    stalled_before = utcnow() - timedelta(minutes=IMPORT_STALL_AFTER_MINUTES)
    batches = db.session.execute(select(CardImport.id, CardImport.job_id, CardImport.created_at)
                                 .where(CardImport.status.in_(("queued", "running")))
                                 .order_by(CardImport.id)).all()
    db.session.rollback()
    resumed = []
    for batch_id, job_id, created_at in batches:
        if _import_job_alive(job_id) if job_id else created_at > stalled_before:
            continue
        logging.getLogger(__name__).warning("card import %s was left unfinished; running it again", batch_id)
        try:
            enqueue(import_cards, batch_id, job_id=job_id or f"card-import-{batch_id}", queue="low")
        except Exception:  # (inline: the import's own error, recorded on the batch) the others still resume
            logging.getLogger(__name__).exception("card import %s could not be resumed", batch_id)
            db.session.rollback()
            continue
        resumed.append(batch_id)
    return resumed


def _import_job_alive(job_id: str) -> bool:
    """Whether RQ still has the import's job waiting or running (a killed worker's job stays `started` until RQ's
    registry clean-up finds its heartbeat expired and fails it)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from workers.queues import redis_connection

    connection = redis_connection()
    if connection is None:
        return False
    try:
        status = Job.fetch(job_id, connection=connection).get_status()
    except NoSuchJobError:
        return False
    return str(getattr(status, "value", status)) in ("queued", "started", "deferred", "scheduled")


def scan_low_stock() -> dict:
    """Scheduled: raise and resolve restock alerts (补货提醒)."""
    return cards.scan_low_stock()


def run_outbox_message(message_id: int) -> None:
    """One outbox message (an order callback, ...): its handler records the attempt and any retry."""
    from app.outbox import service as outbox

    outbox.run(message_id)


def sweep_outbox() -> int:
    """Scheduled: dispatch due retries and anything Redis missed."""
    from app.outbox import service as outbox

    return outbox.sweep()


def purge_nonces() -> int:
    """Scheduled: forget Open API nonces older than the replay window (database store only)."""
    from app.openapi.service import purge_nonces as purge

    return purge()


def purge_risk_day_usage() -> int:
    """Scheduled (daily): drop the daily-limit totals of days no limit reads any more."""
    from app.risk.usage import purge

    return purge()


def purge_lookup_attempts() -> int:
    """Scheduled: forget storefront lookup tries older than the per-order-number budget's window."""
    from app.payments.service import purge_lookup_attempts as purge

    return purge()


def expire_unpaid_orders() -> int:
    """Scheduled: close storefront orders that stayed unpaid past ORDER_EXPIRE_MINUTES."""
    from app.payments.service import expire_unpaid

    return expire_unpaid()


def expire_unpaid_topups() -> int:
    """Scheduled: close wallet top-ups that stayed unpaid past ORDER_EXPIRE_MINUTES."""
    from app.payments.topups import expire_unpaid

    return expire_unpaid()


def expire_review_holds() -> int:
    """Scheduled: reject and refund risk-review holds not decided within RISK_REVIEW_HOURS."""
    from app.risk import reviews

    return reviews.expire_holds()


def reconcile_sandbox_daily(day: str | None = None) -> dict:
    """Scheduled daily: reconcile the sandbox channel's verified notifications of a China day (default yesterday)
    against our payments (app.payments.reconciliation explains why the sandbox's statement is that log)."""
    from app.payments import reconciliation

    return reconciliation.run_sandbox_daily(reconciliation.parse_day(day))


def reconcile_channels_daily(day: str | None = None) -> dict:
    """Scheduled daily: every enabled channel's day (default yesterday, China time) reconciled; the real channels'
    bills are downloaded from the channels themselves."""
    from app.payments import reconciliation

    return reconciliation.run_daily(reconciliation.parse_day(day))


def poll_refunds() -> dict:
    """Scheduled: ask the channels about open refunds that are due (refund again with the same number, or query)."""
    from app.payments import refunds

    return refunds.poll_due()


def query_open_payments() -> dict:
    """Scheduled: payments started at a channel with no notification after a few minutes are asked about."""
    from app.payments import service

    return service.query_open_payments()


def pay_withdrawal(withdrawal_id: int) -> str:
    """An approved withdrawal's payout (job id payout-<no>); idempotent: a re-run never pays twice."""
    from app.network import withdrawals

    return withdrawals.pay(withdrawal_id)


def settle_commissions() -> dict:
    """Scheduled daily: settle due commissions (pending → wallet). Idempotent: rows settle once."""
    from app.network import settlement

    return settlement.report(settlement.settle(trigger="scheduled"))


def award_team_bonus(month: str | None = None) -> dict:
    """Scheduled monthly (1st): the team bonus for last month (default). Idempotent: an award is booked once."""
    from app.network import team_bonus

    return team_bonus.run(month)


def recharge_order(order_id: int) -> str:
    """A paid direct order (job id recharge-<order_no>): submit it, or ask the supplier that has it. Idempotent."""
    from app.suppliers import recharge

    return recharge.run(order_id)


def poll_recharge(attempt_id: int) -> str:
    """One due top-up attempt: ask its supplier and apply the answer (deliver, fail over, or ask again later)."""
    from app.suppliers import recharge

    return recharge.poll(attempt_id)


def poll_recharges() -> dict:
    """Scheduled: claim the top-up attempts whose poll is due and ask each supplier (one job per attempt)."""
    from app.suppliers import recharge
    from workers.queues import enqueue

    claimed = recharge.claim_due()
    for attempt_id in claimed:
        try:
            enqueue(poll_recharge, attempt_id, job_id=f"recharge-poll-{attempt_id}", queue="high")
        except Exception:  # Redis down: the claim expires (recharge.POLL_LEASE) and the next poll takes it again
            logging.getLogger(__name__).exception("recharge poll of attempt %s not run", attempt_id)
            break
    return {"claimed": len(claimed)}


def enforce_delivery_sla() -> dict:
    """Scheduled: direct top-ups past DELIVERY_SLA_MINUTES are withdrawn and failed over or refunded (never when
    their state at the supplier is unknown); support is alerted (app/suppliers/sla.py)."""
    from app.suppliers import sla

    return sla.check()


def sync_suppliers() -> dict:
    """Scheduled: pull balances, stock and prices from connected suppliers; raise/resolve their alerts."""
    from app.suppliers import sync

    return sync.sync_all()


def poll_paying_withdrawals() -> dict:
    """Scheduled: ask the bank about withdrawals left paying (a timeout); book paid / failed once (row lock)."""
    from app.network import withdrawals

    return withdrawals.poll_paying()


def fold_order_rollups() -> int:
    """Scheduled: fold pending deliveries and refunds into the order rollups (each pending row once, by id)."""
    from app.analytics import service as rollups

    return rollups.fold_orders_all()


def fold_money_flows() -> int:
    """Scheduled: fold new ledger journals into rollup_money_daily (watermark; running twice adds nothing)."""
    from app.analytics import service as rollups

    return rollups.fold_money_all()


def compact_rollups() -> dict:
    """Scheduled: merge the rollup delta rows added since the last run, key by key (sums unchanged)."""
    from app.analytics import service as rollups

    return rollups.compact()


def rebuild_rollups(start: str, end: str) -> dict:
    """Recompute every rollup of China days start..end (YYYY-MM-DD, inclusive); job id rollups-rebuild-<range>."""
    from app.analytics import service as rollups

    return rollups.rebuild(rollups.parse_day(start), rollups.parse_day(end))


def seal_chain() -> int:
    """Scheduled: give the tamper-evident records committed since the last run their place in the hash chain."""
    from app.chain import service as chain

    return chain.seal()


def evaluate_alerts() -> dict:
    """Scheduled: evaluate the alert rules; new alerts and recoveries leave through the outbox (app/alerts)."""
    from app.alerts import service as alerts

    return alerts.evaluate()


def train_risk_model() -> int | None:
    """Scheduled weekly: collect labels and train a new fraud model version (a shadow until an admin promotes it
    where it beats the rules). Returns the version, or None when the labelled history is too small."""
    from flask import current_app

    from app.errors import ValidationError
    from app.risk.learning import model

    try:
        return model.train(seed=int(current_app.config.get("RISK_MODEL_SEED", 7))).version
    except ValidationError as exc:
        logging.getLogger(__name__).warning("risk model not trained: %s", exc.message)
        return None


def score_agent_anomalies() -> dict:
    """Scheduled daily: the agent tree's anomaly scores, in batch (never on the request path)."""
    from app.risk.learning import anomaly

    return anomaly.run()


# The jobs services ask for by name (app.queueing.enqueue("payout", ...)): the names are the services' vocabulary,
# the functions stay on this side, so no service imports a job.
register_jobs({
    "import_cards": import_cards,
    "outbox": run_outbox_message,
    "payout": pay_withdrawal,
    "rebuild_rollups": rebuild_rollups,
})

"""Write messages in the caller's transaction; dispatch them after commit; a sweeper re-dispatches what Redis missed.

Handlers are registered per topic and must be idempotent: delivery is at least once.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta

from flask import g, has_app_context
from sqlalchemy import event, or_, select, update

from app import states
from app.clock import utcnow
from app.extensions import db
from app.outbox.models import OUTBOX_STATES, OutboxMessage

log = logging.getLogger(__name__)
HANDLERS: dict[str, Callable[[OutboxMessage], None]] = {}
# Per topic, the RQ job id for a message (from its payload): e.g. one `recharge-<order_no>` job per order, so the
# sweeper's re-dispatch of the same message reuses the id. Topics without one get `outbox-<id>-<attempts>`.
JOB_IDS: dict[str, Callable[[dict], str]] = {}
# A message handed to RQ that has not finished after this long is dispatched again by the sweeper.
REDISPATCH_AFTER = timedelta(minutes=2)
_PENDING_KEY = "kameng_outbox_pending"


def handler(topic: str, job_id: Callable[[dict], str] | None = None):
    def register(func: Callable[[OutboxMessage], None]):
        HANDLERS[topic] = func
        if job_id is not None:
            JOB_IDS[topic] = job_id
        return func
    return register


def write(topic: str, key: str, payload: dict) -> None:
    """Add a message to the current transaction (a repeated key is ignored: one message per event)."""
    if db.session.scalar(select(OutboxMessage.id).where(OutboxMessage.key == key)) is not None:
        return
    message = OutboxMessage(topic=topic, key=key, payload=json.dumps(payload, ensure_ascii=False, default=str),
                            status="pending", next_attempt_at=utcnow())
    db.session.add(message)
    db.session.flush()
    db.session.info.setdefault(_PENDING_KEY, []).append(message.id)


def dispatch(message_ids: list[int]) -> None:
    """Hand messages to RQ (queue high), or run them now when there is no Redis."""
    from app.queueing import enqueue, redis_connection

    for message_id in message_ids:
        db.session.execute(update(OutboxMessage).where(OutboxMessage.id == message_id)
                           .values(dispatched_at=utcnow()))
        db.session.commit()
        if redis_connection() is None:
            run(message_id)  # what the job would do (workers.jobs.run_outbox_message), here and now
            continue
        try:
            row = db.session.execute(select(OutboxMessage.topic, OutboxMessage.payload, OutboxMessage.attempts)
                                     .where(OutboxMessage.id == message_id)).one()
            job_id = (JOB_IDS[row.topic](json.loads(row.payload)) if row.topic in JOB_IDS
                      else f"outbox-{message_id}-{row.attempts}")
            enqueue("outbox", message_id, job_id=job_id, queue="high")
        except Exception as exc:  # Redis down: the sweeper will dispatch it later; nothing is lost
            log.warning("outbox %s not dispatched (%s); the sweeper will retry", message_id, exc)
            # Not handed over after all: due again at the next sweep, not only after REDISPATCH_AFTER.
            db.session.rollback()
            db.session.execute(update(OutboxMessage).where(OutboxMessage.id == message_id)
                               .values(dispatched_at=None))
            db.session.commit()


def run(message_id: int) -> None:
    """Run one message's handler once. The handler decides done / retry / failed through finish()/retry_later()."""
    message = db.session.get(OutboxMessage, message_id)
    if message is None or message.status != "pending" or message.next_attempt_at > utcnow():
        return
    func = HANDLERS.get(message.topic)
    if func is None:
        finish(message, "failed", f"no handler for topic {message.topic}")
        return
    func(message)


def finish(message: OutboxMessage, status: str, error: str | None = None) -> None:
    """The one place a message's status changes (OUTBOX_STATES); commits. A run that lost the race to another run
    of the same message (delivery is at least once) leaves the first outcome standing."""
    try:
        states.move(OUTBOX_STATES, message.id, message.status, status, last_error=(error or None) and error[:255],
                    finished_at=utcnow())
    except states.LostMove:
        db.session.rollback()
        log.info("outbox %s was finished by another run", message.id)
        return
    db.session.commit()


def retry_later(message: OutboxMessage, delay: timedelta, error: str) -> None:
    message.next_attempt_at = utcnow() + delay
    message.last_error = error[:255]
    message.dispatched_at = None
    db.session.commit()


def sweep(limit: int = 500) -> int:
    """Dispatch pending messages that are due and were never dispatched, or were dispatched long ago, longest due
    first. In the order of (status, next_attempt_at) so that only that index reads them: ordered by id, once the
    statistics saw a backlog (after a Redis outage) the planner walked the primary key through every finished
    message below the first waiting one (200,000 rows and 30 ms a batch on a table of 260,000), on a table that
    only grows."""
    now = utcnow()
    ids = list(db.session.scalars(
        select(OutboxMessage.id).where(
            OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now,
            or_(OutboxMessage.dispatched_at.is_(None), OutboxMessage.dispatched_at < now - REDISPATCH_AFTER))
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(limit)))
    if ids:
        dispatch(ids)
    return len(ids)


def _after_commit(session) -> None:
    ids = session.info.pop(_PENDING_KEY, None)
    if ids and has_app_context():
        # No SQL may run inside after_commit; dispatch when the request or job finishes (dispatch_due).
        g.setdefault("kameng_outbox_due", []).extend(ids)


def _after_rollback(session, previous_transaction) -> None:
    session.info.pop(_PENDING_KEY, None)


def dispatch_due() -> None:
    """Dispatch what this request's or job's committed transactions wrote. Safe to call any time."""
    if not has_app_context():
        return
    due = g.pop("kameng_outbox_due", None)
    if due:
        try:
            dispatch(due)
        except Exception:  # never fail the request that already committed; the sweeper retries
            db.session.rollback()
            log.exception("outbox dispatch failed; the sweeper will retry %s", due)


def init_app(app) -> None:
    if not event.contains(db.session, "after_commit", _after_commit):  # one session for every app (tests make many)
        event.listen(db.session, "after_commit", _after_commit)
        event.listen(db.session, "after_soft_rollback", _after_rollback)
    app.teardown_request(lambda exc: dispatch_due())


def settle(message: OutboxMessage, status: str, delay: timedelta | None = None, error: str | None = None) -> None:
    """A handler's outcome on its message: retry / busy wait `delay` and run again, failed ends it with the error,
    anything else (sent, skipped) ends it done."""
    if status in ("retry", "busy"):
        retry_later(message, delay or timedelta(0), error or status)
    elif status == "failed":
        finish(message, "failed", error)
    else:
        finish(message, "done")


def retry_schedule(setting: str) -> list[timedelta]:
    """A setting of comma-separated seconds (e.g. NOTICE_RETRY_SECONDS) as the waits between attempts."""
    from flask import current_app

    from app.errors import ValidationError

    raw = str(current_app.config.get(setting) or "")
    try:
        return [timedelta(seconds=max(0, int(part))) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ValidationError(f"{setting} must be seconds separated by commas, got {raw!r}") from None

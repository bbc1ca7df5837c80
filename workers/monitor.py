"""Read RQ's queues and registries for the jobs page (任务队列), and the few operator actions on them.

Everything goes through RQ 3's own registry API (Queue, StartedJobRegistry, FailedJobRegistry, ...): no Redis keys
are read by hand. Functions take queue names and job ids (never Job objects from the caller), and refuse job ids
that are not in the registry they name, so a form cannot requeue or cancel an arbitrary key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from workers.queues import QUEUES, get_queue, redis_connection

# The states the page shows, in order: the queue itself, then RQ's registries.
STATES = ("queued", "started", "failed", "scheduled", "deferred", "finished", "canceled")
_REGISTRIES = {
    "started": StartedJobRegistry,
    "failed": FailedJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "deferred": DeferredJobRegistry,
    "finished": FinishedJobRegistry,
    "canceled": CanceledJobRegistry,
}
# Newest first where a registry's score is a time that grows with recency (finished/failed: expiry at end + ttl;
# started: heartbeat deadline); scheduled jobs are listed soonest first, queued jobs in queue order.
_NEWEST_FIRST = {"started", "failed", "finished", "canceled", "deferred"}
MAX_PAGE_SIZE = 200


class JobsUnavailable(Exception):
    """No REDIS_URL: jobs run inline in the web process, there is nothing to show."""


class JobActionRefused(Exception):
    """The job is not (or no longer) in the state the action needs."""


@dataclass
class JobRow:
    id: str
    state: str
    func: str = ""
    args: str = ""
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    scheduled_for: datetime | None = None
    worker: str = ""
    error: str = ""  # the last line of exc_info, for failed jobs
    progress: dict | None = None  # job.meta["progress"] ({"done", "total"}) when the job reports it
    missing: bool = False  # the registry names a job whose hash has expired


@dataclass
class QueueSnapshot:
    name: str
    counts: dict[str, int]
    jobs: dict[str, list[JobRow]] = field(default_factory=dict)


@dataclass
class WorkerRow:
    name: str
    state: str
    queues: list[str]
    current_job: str | None
    last_heartbeat: datetime | None


def enabled() -> bool:
    return redis_connection() is not None


def _queue(name: str) -> Queue:
    if not enabled():
        raise JobsUnavailable("REDIS_URL is not set: jobs run inline")
    if name not in QUEUES:
        raise JobActionRefused(f"unknown queue {name!r}")
    return get_queue(name)


def _registry(queue: Queue, state: str):
    return _REGISTRIES[state](queue=queue)


def counts(queue_name: str) -> dict[str, int]:
    queue = _queue(queue_name)
    result = {"queued": queue.count}
    for state in _REGISTRIES:
        result[state] = _registry(queue, state).count
    return result


def _job_ids(queue: Queue, state: str, offset: int, limit: int) -> list[str]:
    if state == "queued":
        return queue.get_job_ids(offset=offset, length=limit)
    registry = _registry(queue, state)
    return registry.get_job_ids(offset, offset + limit - 1, desc=state in _NEWEST_FIRST)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _describe(job: Job, state: str, queue: Queue) -> JobRow:
    row = JobRow(id=job.id, state=state, enqueued_at=_naive_utc(job.enqueued_at),
                 started_at=_naive_utc(job.started_at), ended_at=_naive_utc(job.ended_at), worker=job.worker_name or "")
    try:
        row.func = job.func_name or ""
        row.args = ", ".join([repr(a) for a in job.args] + [f"{k}={v!r}" for k, v in job.kwargs.items()])[:120]
    except Exception:  # data that no longer unpickles (a renamed function): still list the job
        row.func = "?"
    progress = (job.meta or {}).get("progress")
    row.progress = progress if isinstance(progress, dict) else None
    if state == "failed":
        result = job.latest_result()
        row.error = _last_line(result.exc_string if result is not None else None)
    if state == "scheduled":
        try:
            row.scheduled_for = _naive_utc(ScheduledJobRegistry(queue=queue).get_scheduled_time(job.id))
        except NoSuchJobError:
            pass
    return row


def jobs(queue_name: str, state: str, offset: int = 0, limit: int = 20) -> list[JobRow]:
    """One page of a queue's jobs in one state, read in one round trip for the job hashes."""
    if state not in STATES:
        raise JobActionRefused(f"unknown state {state!r}")
    queue = _queue(queue_name)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    ids = _job_ids(queue, state, max(0, offset), limit)
    rows = []
    fetched = Job.fetch_many(ids, connection=queue.connection, serializer=queue.serializer)
    for job_id, job in zip(ids, fetched, strict=True):
        rows.append(JobRow(id=job_id, state=state, missing=True) if job is None else _describe(job, state, queue))
    return rows


def overview(limit: int = 10) -> list[QueueSnapshot]:
    """Every queue with its counts and the first `limit` jobs of each non-empty state."""
    snapshots = []
    for name in QUEUES:
        snapshot = QueueSnapshot(name=name, counts=counts(name))
        for state in STATES:
            if snapshot.counts[state]:
                snapshot.jobs[state] = jobs(name, state, 0, limit)
        snapshots.append(snapshot)
    return snapshots


def workers() -> list[WorkerRow]:
    if not enabled():
        raise JobsUnavailable("REDIS_URL is not set: jobs run inline")
    rows = []
    for worker in Worker.all(connection=redis_connection()):
        rows.append(WorkerRow(name=worker.name, state=worker.get_state(), queues=worker.queue_names(),
                              current_job=worker.get_current_job_id(),
                              last_heartbeat=_naive_utc(worker.last_heartbeat)))
    return sorted(rows, key=lambda w: w.name)


def retry_failed(queue_name: str, job_id: str) -> str:
    """Put one failed job back on its queue (RQ's requeue: same id, same arguments). Returns the job id."""
    queue = _queue(queue_name)
    registry = FailedJobRegistry(queue=queue)
    if job_id not in registry:  # ZSCORE: one lookup, however many jobs failed
        raise JobActionRefused(f"job {job_id} is not among {queue_name}'s failed jobs")
    try:
        return registry.requeue(job_id).id
    except (InvalidJobOperation, NoSuchJobError):
        raise JobActionRefused(f"job {job_id} could not be requeued (already requeued or expired)") from None


def retry_all_failed(queue_name: str) -> int:
    """Requeue every failed job of a queue; jobs whose hash expired are dropped from the registry."""
    queue = _queue(queue_name)
    registry = FailedJobRegistry(queue=queue)
    requeued = 0
    for job_id in registry.get_job_ids():
        try:
            registry.requeue(job_id)
            requeued += 1
        except NoSuchJobError:
            registry.remove(job_id)  # nothing left to run
        except InvalidJobOperation:
            continue  # someone else requeued it meanwhile
    return requeued


def cancel(queue_name: str, job_id: str) -> str:
    """Cancel a job that has not started: queued or scheduled (or deferred). Returns the state it was in."""
    queue = _queue(queue_name)
    if queue.get_job_position(job_id) is not None:  # LPOS
        state = "queued"
    elif job_id in ScheduledJobRegistry(queue=queue):
        state = "scheduled"
    elif job_id in DeferredJobRegistry(queue=queue):
        state = "deferred"
    else:
        raise JobActionRefused(f"job {job_id} is not waiting in {queue_name} (running or done jobs are not cancelled)")
    try:
        Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer).cancel()
    except NoSuchJobError:
        # The registry names a job whose data expired: take the id off the queue/registry so it stops showing.
        queue.remove(job_id)
        ScheduledJobRegistry(queue=queue).remove(job_id)
        DeferredJobRegistry(queue=queue).remove(job_id)
    except InvalidJobOperation:
        raise JobActionRefused(f"job {job_id} was already cancelled") from None
    return state


def _naive_utc(value: datetime | None) -> datetime | None:
    """RQ keeps naive UTC datetimes in some places and aware ones in others; we store naive UTC (app.clock)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)

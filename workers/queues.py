"""The workers' side of RQ: queues, connection and enqueueing are app.queueing's (services use them too, without
importing workers/); what only a running job needs lives here."""
from __future__ import annotations

from rq import get_current_job

from app.queueing import QUEUES, enqueue, get_queue, redis_connection

__all__ = ["QUEUES", "enqueue", "get_queue", "redis_connection", "report_progress"]


def report_progress(done: int, total: int) -> None:
    """Record progress in job.meta when running as a job (the UI reads it); a no-op inline."""
    job = get_current_job()
    if job is None:
        return
    job.meta["progress"] = {"done": done, "total": total}
    job.save_meta()

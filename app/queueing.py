"""RQ set-up in one place, for services and workers alike: the Redis connection, the named queues, and enqueueing
that runs inline when REDIS_URL is unset.

A service asks for work by job name (`enqueue("payout", ...)`), after its commit; the worker side maps names to job
functions (JOBS, filled by the module named in JOB_REGISTRY: workers/jobs.py). So the dependency points one way,
workers → app: nothing under app/ imports workers/ (tests/test_architecture.py).
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from flask import current_app
from redis import Redis
from rq import Queue

QUEUES = ("high", "default", "low")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Job name → job function, registered by the workers' job module when it loads.
JOBS: dict[str, Callable] = {}


def register_jobs(jobs: dict[str, Callable]) -> None:
    JOBS.update(jobs)


def job_function(name: str) -> Callable:
    """The job function of a name; loads the job registry (JOB_REGISTRY) the first time one is asked for."""
    if name not in JOBS:
        importlib.import_module(current_app.config["JOB_REGISTRY"])
    try:
        return JOBS[name]
    except KeyError:
        raise ValueError(f"unknown job {name!r}") from None


def redis_connection() -> Redis | None:
    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    conns = current_app.extensions.setdefault("kameng_redis", {})
    if url not in conns:
        # Blocking waits (worker dequeue) need a timeout above redis-py 8's 5 s default.
        conns[url] = Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
    return conns[url]


def get_queue(name: str) -> Queue:
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}")
    connection = redis_connection()
    if connection is None:
        raise RuntimeError("REDIS_URL is not set: jobs run inline")
    return Queue(name, connection=connection)


def enqueue(job: str | Callable, *args: Any, job_id: str, queue: str = "default", timeout: int = 1800,
            **kwargs: Any) -> str | None:
    """Enqueue a job (by name, or a job function from workers/) with a deterministic id; with no Redis, run it now
    in this process.

    Returns the job id when queued, None when it ran inline.
    """
    if not _JOB_ID.match(job_id):
        raise ValueError(f"job id {job_id!r} must be [A-Za-z0-9_-]")
    func = job_function(job) if isinstance(job, str) else job
    if redis_connection() is None:
        func(*args, **kwargs)
        return None
    rq_queue = get_queue(queue)
    # A deterministic id enqueued again (the sweeper re-dispatching a job whose worker died) starts afresh: its old
    # entry in the failed registry would otherwise show a job that is about to succeed as failed.
    rq_queue.failed_job_registry.remove(job_id)
    from app.ops.logs import current_request_id

    # The request (or job) that enqueues is named in the job's meta: the worker's log lines for it carry its id.
    request_id = current_request_id()
    # The function itself is enqueued (not the name): RQ records its dotted path, which the jobs page and the
    # failed-job alerts show, and the worker imports.
    rq_job = rq_queue.enqueue(func, *args, job_id=job_id, job_timeout=timeout, result_ttl=86400,
                              failure_ttl=30 * 86400, meta={"request_id": request_id} if request_id else None,
                              **kwargs)
    return rq_job.id

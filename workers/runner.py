"""`flask kameng worker`: RQ workers inside the Flask app, with the scheduler and the periodic jobs."""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask, current_app
from rq import SimpleWorker

from workers.queues import QUEUES, get_queue, redis_connection
from workers.schedule import build_cron

log = logging.getLogger(__name__)


class AppWorker(SimpleWorker):
    """Runs jobs in-process (no fork: ~360 jobs/s measured) inside the Flask app context."""

    flask_app: Flask | None = None

    def perform_job(self, job, queue, *args, **kwargs):
        from app.ops import logs

        # Log lines of this job carry the id of the request that enqueued it (and the job's own id).
        tokens = logs.bind((job.meta or {}).get("request_id"), job.id)
        with self.flask_app.app_context():
            try:
                result = super().perform_job(job, queue, *args, **kwargs)
                from app.outbox.service import dispatch_due
                dispatch_due()  # what the job committed to the outbox leaves now
                return result
            finally:
                from app.extensions import db
                db.session.remove()
                logs.unbind(tokens)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        """Also re-register when Redis lost this worker (a restart without persistence): RQ registers a worker
        once, at birth, so it would go on working unseen by the jobs page and the metrics."""
        if pipeline is None and not self.connection.hexists(self.key, "birth"):
            self.connection.delete(self.key)  # a heartbeat's own leftovers, without the worker's fields
            self.register_birth()
            self.log.warning("Worker %s: registered again (Redis had lost its registration)", self.name)
        return super().heartbeat(timeout, pipeline)


def _cron_loop(app: Flask, stop: threading.Event) -> None:
    with app.app_context():
        cron = build_cron(app, redis_connection())
        while not stop.is_set():
            try:
                if cron.enqueue_jobs():
                    cron.save()
                wait = max(1.0, min(cron.calculate_sleep_interval(), 30.0))
            except Exception:  # Redis restarting: the periodic jobs go on once it answers (the thread must live)
                log.warning("periodic jobs not enqueued (Redis unreachable?); retrying", exc_info=True)
                wait = 2.0
            stop.wait(wait)


def run_worker(queues: list[str] | None = None, burst: bool = False, with_cron: bool = True) -> bool:
    connection = redis_connection()
    if connection is None:
        raise RuntimeError("REDIS_URL is not set: without Redis, jobs run inline in the web process")
    app = current_app._get_current_object()
    names = queues or list(QUEUES)
    stop = threading.Event()
    cron_thread = None
    if with_cron and not burst:
        cron_thread = threading.Thread(target=_cron_loop, args=(app, stop), daemon=True, name="kameng-cron")
        cron_thread.start()
    try:
        while True:
            worker = AppWorker([get_queue(n) for n in names], connection=connection)
            worker.flask_app = app
            worked = worker.work(burst=burst, with_scheduler=True)
            if burst or worker._stop_requested:
                return worked
            # RQ quits on a Redis error it meets outside a job (e.g. finishing one while Redis restarts). The job
            # itself is safe (idempotent, re-dispatched by the outbox sweeper): work again once Redis answers.
            log.warning("worker %s stopped without being asked (Redis unreachable?); starting again", worker.name)
            for _ in range(20):
                time.sleep(0.5)
                if worker._stop_requested:
                    return worked
                try:
                    if connection.ping():
                        break
                except Exception:
                    continue
    finally:
        stop.set()
        if cron_thread:
            cron_thread.join(timeout=5)

"""The embedded default (no REDIS_URL): the periodic jobs of workers/schedule.py run on one thread of the web
process, so `make run` expires unpaid orders, polls top-ups and settles commissions as a worker would.

Only `flask run` in `make run` turns it on (INLINE_SCHEDULER=true); CLI commands and gunicorn with Redis never
start it. Each job runs in its own app context and session, like a worker's job.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime

from croniter import croniter
from flask import Flask

from workers.schedule import PERIODIC, Periodic

log = logging.getLogger(__name__)


def _next_run(item: Periodic, app: Flask, after: datetime) -> datetime:
    if item.cron:  # local clock, as RQ's CronScheduler reads cron expressions
        return croniter(item.cron, after).get_next(datetime)
    return datetime.fromtimestamp(after.timestamp() + int(app.config[item.interval_setting]))


def _run_once(app: Flask, item: Periodic) -> None:
    from app.extensions import db
    from app.outbox.service import dispatch_due

    with app.app_context():
        try:
            item.func()
            dispatch_due()  # what the job committed to the outbox leaves now, as after a worker's job
        except Exception:  # one failing job never stops the others; it runs again at its next time
            log.exception("periodic job %s failed", item.name)
        finally:
            db.session.remove()


def start_inline_scheduler(app: Flask, tick: float = 1.0) -> threading.Event | None:
    """Start the thread when INLINE_SCHEDULER is on and there is no Redis; returns the event that stops it."""
    if app.config.get("REDIS_URL") or not app.config.get("INLINE_SCHEDULER"):
        return None
    stop = threading.Event()

    def loop() -> None:
        now = datetime.now()
        due = {item.name: _next_run(item, app, now) if item.cron else now for item in PERIODIC}
        while not stop.is_set():
            for item in PERIODIC:
                if stop.is_set():
                    break
                if datetime.now() >= due[item.name]:
                    _run_once(app, item)
                    due[item.name] = _next_run(item, app, datetime.now())
            stop.wait(tick)

    threading.Thread(target=loop, daemon=True, name="kameng-inline-scheduler").start()
    log.info("periodic jobs run inline (no REDIS_URL)")
    return stop

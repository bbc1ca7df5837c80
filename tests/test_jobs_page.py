"""任务队列 (the jobs page): RQ's queues and registries read through workers.monitor, with real Redis and a real
burst worker; retry a failed job, retry all, cancel a waiting one; Admin only; a clear message without Redis."""
from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import select

from app.audit.models import AuditEntry
from app.extensions import db
from workers import jobs
from workers.queues import get_queue, redis_connection
from workers.runner import run_worker


@pytest.fixture
def with_redis(app, redis_url):
    app.config["REDIS_URL"] = redis_url
    try:
        yield redis_url
    finally:
        app.config["REDIS_URL"] = None


@pytest.fixture
def admin(app, f):
    user = f.user(f.unique("admin"), role="Admin")
    return f.login(app.test_client(), user.username)


def _failing_and_scheduled():
    """A card import of a batch that does not exist fails in the job (ImportRejected); a scan planned in an hour
    stays in the scheduled registry."""
    low = get_queue("low")
    failing = low.enqueue(jobs.import_cards, 987654, job_id="card-import-987654", failure_ttl=3600)
    scheduled = low.enqueue_in(timedelta(hours=1), jobs.scan_low_stock, job_id="scan-later")
    run_worker(["low"], burst=True, with_cron=False)
    return failing.id, scheduled.id


def _row(page: str, job_id: str) -> str:
    start = page.index(f'data-job-id="{job_id}"')
    return page[start:page.index("</tr>", start)]


def test_failed_and_scheduled_jobs_are_shown_and_a_failed_one_is_retried(app, f, admin, with_redis):
    failed_id, scheduled_id = _failing_and_scheduled()
    low = get_queue("low")
    assert failed_id in FailedJobRegistry(queue=low).get_job_ids()

    page = admin.get("/jobs/").text
    counts = page[page.index('id="queue-counts"'):page.index("</table>", page.index('id="queue-counts"'))]
    low_row = counts[counts.index('data-queue="low"'):]
    assert '<td class="count-failed"><a href="/jobs/low/failed">1</a>' in low_row
    assert '<td class="count-scheduled"><a href="/jobs/low/scheduled">1</a>' in low_row
    failed_row = _row(page, failed_id)
    assert "workers.jobs.import_cards" in failed_row and "987654" in failed_row
    assert "ImportRejected" in failed_row and "导入批次不存在" in failed_row  # exc_info's last line
    assert "workers.jobs.scan_low_stock" in _row(page, scheduled_id)

    # the per-state page lists the same, with the retry form
    page = admin.get("/jobs/low/failed").text
    assert 'class="form-inline retry-form"' in _row(page, failed_id)

    r = admin.post("/jobs/low/retry", data={"job_id": failed_id, "back": "failed"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/jobs/low/failed")
    assert failed_id in low.get_job_ids() and failed_id not in FailedJobRegistry(queue=low).get_job_ids()
    assert Job.fetch(failed_id, connection=redis_connection()).get_status() == "queued"
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "job.retry"))
    assert entry is not None and entry.target_id == failed_id
    page = admin.get("/jobs/").text
    assert "card-import-987654" in _row(page, failed_id) and "count-queued" in page
    assert '<td class="count-queued"><a href="/jobs/low/queued">1</a>' in page

    # a second retry of the same id is refused (it is no longer failed), with a message, not a 500
    r = admin.post("/jobs/low/retry", data={"job_id": failed_id}, follow_redirects=True)
    assert r.status_code == 200 and "无法重试" in r.text

    # it runs again and fails again; "retry all" puts it back once more
    run_worker(["low"], burst=True, with_cron=False)
    assert failed_id in FailedJobRegistry(queue=low).get_job_ids()
    assert admin.post("/jobs/low/retry-all").status_code == 302
    assert low.get_job_ids() == [failed_id]


def test_cancel_a_scheduled_and_a_queued_job(app, f, admin, with_redis):
    _, scheduled_id = _failing_and_scheduled()
    low = get_queue("low")
    queued = low.enqueue(jobs.scan_low_stock, job_id="scan-now")
    assert admin.post("/jobs/low/cancel", data={"job_id": scheduled_id}).status_code == 302
    assert scheduled_id not in ScheduledJobRegistry(queue=low).get_job_ids()
    assert admin.post("/jobs/low/cancel", data={"job_id": queued.id}).status_code == 302
    assert low.get_job_ids() == []
    assert Job.fetch(queued.id, connection=redis_connection()).get_status() == "canceled"
    page = admin.get("/jobs/low/canceled").text
    assert 'data-job-id="scan-now"' in page and 'data-job-id="scan-later"' in page
    # a failed job is not cancellable; an id that is nowhere neither; a malformed id is a 400
    r = admin.post("/jobs/low/cancel", data={"job_id": "card-import-987654"}, follow_redirects=True)
    assert "无法取消" in r.text
    assert admin.post("/jobs/low/cancel", data={"job_id": "bad id <x>"}).status_code == 400
    assert admin.post("/jobs/nope/cancel", data={"job_id": "x"}).status_code == 404
    assert admin.get("/jobs/low/nope").status_code == 404


def wait_for_release(key: str) -> str:
    """A job that reports progress, then runs until the test sets `key` in Redis (at most 20 s)."""
    from rq import get_current_job

    from workers.queues import report_progress

    report_progress(3, 10)
    connection = get_current_job().connection
    for _ in range(200):
        if connection.get(key):
            return "released"
        time.sleep(0.1)
    return "timed out"


def test_running_job_shows_its_worker_and_progress(app, f, admin, with_redis):
    """While a real worker runs a job, the page lists it as running, with its worker and job.meta progress."""
    low = get_queue("low")
    job = low.enqueue(wait_for_release, "release-long-job", job_id="long-job")
    seen: dict[str, str] = {}
    connection = redis_connection()

    def watch():
        try:
            for _ in range(100):
                page = admin.get("/jobs/low/started").text
                # listed once the job runs (it reported progress; the worker has stamped its name by then)
                if 'data-job-id="long-job"' in page and "3/10" in _row(page, "long-job"):
                    seen["started"] = page
                    seen["index"] = admin.get("/jobs/").text
                    return
                time.sleep(0.1)
        finally:
            connection.set("release-long-job", "1")

    watcher = threading.Thread(target=watch)
    watcher.start()
    run_worker(["low"], burst=True, with_cron=False)
    watcher.join(timeout=30)
    assert Job.fetch(job.id, connection=redis_connection()).return_value() == "released"
    row = _row(seen["started"], "long-job")
    worker_name = re.search(r'<td class="job-worker">([^<]+)</td>', row).group(1)
    assert "3/10" in row and "test_jobs_page.wait_for_release" in row
    assert f"<td>{worker_name}</td>" in seen["index"]  # the workers table names the same worker, busy on it
    assert "long-job" in seen["index"][seen["index"].index('id="workers"'):]


def test_jobs_page_without_redis_says_jobs_run_inline(app, admin):
    page = admin.get("/jobs/").text
    assert 'id="jobs-inline"' in page and "REDIS_URL" in page


def test_only_admins_reach_the_jobs_page(app, f, with_redis):
    _failing_and_scheduled()
    manager = f.login(app.test_client(), f.user(f.unique("mgr"), role="Manager").username)
    agent = f.agent()
    agent_client = f.login(app.test_client(), agent.user.username)
    for client in (manager, agent_client, app.test_client()):
        refused = (302, 403)
        assert client.get("/jobs/").status_code in refused  # FAB: access denied (403, or the login page)
        assert client.get("/jobs/low/failed").status_code in refused
        assert client.post("/jobs/low/retry", data={"job_id": "card-import-987654"}).status_code in refused
        assert client.post("/jobs/low/retry-all").status_code in refused
    assert "card-import-987654" in FailedJobRegistry(queue=get_queue("low")).get_job_ids()  # nothing requeued
    assert "任务队列" not in manager.get("/").text

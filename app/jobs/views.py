"""任务队列: RQ's queues and registries for admins (counts, running, failed, scheduled ... jobs) with retry and
cancel. The reading and the actions live in workers.monitor; this view parses the request and renders."""
from __future__ import annotations

import re

from flask import abort, flash, redirect, request, url_for
from flask_appbuilder import BaseView, expose, has_access
from flask_babel import gettext
from flask_babel import lazy_gettext as _

from app.audit import service as audit
from app.extensions import db
from workers import monitor
from workers.queues import QUEUES

STATE_LABELS = {"queued": _("排队中"), "started": _("运行中"), "failed": _("失败"), "scheduled": _("已计划"),
                "deferred": _("等待依赖"), "finished": _("已完成"), "canceled": _("已取消")}
PAGE_SIZE = 50
OVERVIEW_ROWS = 10
_JOB_ID = re.compile(r"[A-Za-z0-9_:.\-]{1,128}")


def _job_id() -> str:
    job_id = (request.form.get("job_id") or "").strip()
    if not _JOB_ID.fullmatch(job_id):
        abort(400)
    return job_id


def _queue_name(queue: str) -> str:
    if queue not in QUEUES:
        abort(404)
    return queue


class JobsView(BaseView):
    route_base = "/jobs"
    default_view = "index"

    @expose("/")
    @has_access
    def index(self):
        if not monitor.enabled():
            return self.render_template("kameng/jobs.html", enabled=False)
        return self.render_template("kameng/jobs.html", enabled=True, queues=monitor.overview(OVERVIEW_ROWS),
                                    workers=monitor.workers(), states=STATE_LABELS, per_state=OVERVIEW_ROWS)

    @expose("/<queue>/<state>")
    @has_access
    def list(self, queue, state):
        queue = _queue_name(queue)
        if state not in monitor.STATES:
            abort(404)
        if not monitor.enabled():
            return self.render_template("kameng/jobs.html", enabled=False)
        page = request.args.get("page", 1, type=int) or 1
        page = max(1, min(page, 100_000))
        total = monitor.counts(queue)[state]
        rows = monitor.jobs(queue, state, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        return self.render_template("kameng/jobs_list.html", queue=queue, state=state, states=STATE_LABELS,
                                    rows=rows, page=page, total=total,
                                    pages=max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE))

    def _back(self, queue: str):
        target = request.form.get("back")
        if target in monitor.STATES:
            return redirect(url_for("JobsView.list", queue=queue, state=target))
        return redirect(url_for("JobsView.index"))

    def _audited(self, action: str, queue: str, job_id: str | None, result) -> None:
        audit.record(f"job.{action}", "rq_job", job_id, None, {"queue": queue, "result": result})
        db.session.commit()

    @expose("/<queue>/retry", methods=["POST"])
    @has_access
    def retry(self, queue):
        queue, job_id = _queue_name(queue), _job_id()
        try:
            monitor.retry_failed(queue, job_id)
        except (monitor.JobActionRefused, monitor.JobsUnavailable) as exc:
            flash(gettext("无法重试：%(error)s", error=str(exc)), "danger")
            return self._back(queue)
        self._audited("retry", queue, job_id, "requeued")
        flash(gettext("任务 %(job)s 已重新排队", job=job_id), "success")
        return self._back(queue)

    @expose("/<queue>/retry-all", methods=["POST"])
    @has_access
    def retry_all(self, queue):
        queue = _queue_name(queue)
        try:
            count = monitor.retry_all_failed(queue)
        except monitor.JobsUnavailable as exc:
            flash(str(exc), "danger")
            return self._back(queue)
        self._audited("retry_all", queue, None, count)
        flash(gettext("已重新排队 %(count)s 个失败任务", count=count), "success")
        return self._back(queue)

    @expose("/<queue>/cancel", methods=["POST"])
    @has_access
    def cancel(self, queue):
        queue, job_id = _queue_name(queue), _job_id()
        try:
            was = monitor.cancel(queue, job_id)
        except (monitor.JobActionRefused, monitor.JobsUnavailable) as exc:
            flash(gettext("无法取消：%(error)s", error=str(exc)), "danger")
            return self._back(queue)
        self._audited("cancel", queue, job_id, was)
        flash(gettext("任务 %(job)s 已取消", job=job_id), "success")
        return self._back(queue)

"""审计日志: the list and record screens, and the CSV export of a date range (app.audit.export)."""
from __future__ import annotations

from datetime import timedelta

from flask import Response, flash, g, request, stream_with_context
from flask_appbuilder import ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _

from app.audit import export
from app.audit.models import AuditEntry
from app.clock import business_today
from app.errors import KamengError
from app.views_common import ReadableColumnsMixin

EXPORT_DEFAULT_DAYS = 30


class AuditView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(AuditEntry)
    route_base = "/audit"
    base_permissions = ["can_list", "can_show", "can_export"]
    list_template = "kameng/audit_list.html"
    list_title = show_title = _("审计日志")
    list_columns = ["created_at", "actor", "action", "target_type", "target_id", "reason"]
    show_columns = ["created_at", "actor", "action", "target_type", "target_id", "old_value", "new_value", "reason"]
    search_columns = ["action", "target_type", "target_id", "actor", "created_at"]
    label_columns = {"created_at": _("时间"), "actor": _("操作人"), "action": _("操作"), "target_type": _("对象类型"),
                     "target_id": _("对象"), "old_value": _("原值"), "new_value": _("新值"), "reason": _("原因")}
    base_order = ("id", "desc")

    def render_template(self, template, **kwargs):
        if template == self.list_template:
            today = business_today()
            kwargs["can_export"] = self.appbuilder.sm.has_access("can_export", self.class_permission_name)
            kwargs["export_since"] = request.args.get("since") or (today - timedelta(days=EXPORT_DEFAULT_DAYS))
            kwargs["export_until"] = request.args.get("until") or today
        return super().render_template(template, **kwargs)

    @expose("/export/")
    @has_access
    def export(self):
        """导出 CSV: the entries of a range of business days, streamed; the export is audited before it starts.
        A bad range shows the list again with the error (400)."""
        try:
            since, until = export.parse_range(request.args.get("since"), request.args.get("until"))
        except KamengError as exc:
            flash(exc.message, "danger")
            return self.list(), 400
        export.record_export(since, until, "page", actor_id=g.user.id)
        body = stream_with_context(export.csv_chunks(export.rows(since, until)))
        return Response(body, mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{export.filename(since, until)}"',
            "Cache-Control": "no-store"})

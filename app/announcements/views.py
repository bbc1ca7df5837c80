"""公告管理: admins post notices (audited); managers read them. Readers see them on their home page."""
from __future__ import annotations

from flask_appbuilder import ModelView
from flask_appbuilder.fieldwidgets import BS3TextAreaFieldWidget
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _
from wtforms import SelectField, TextAreaField

from app.announcements import service
from app.announcements.models import AUDIENCES, Announcement
from app.auditing import AuditedViewMixin
from app.forms import checkbox
from app.views_common import ReadableColumnsMixin


def _fields() -> dict:
    return {
        "audience": SelectField(_("公告对象"), choices=[(k, v) for k, v in AUDIENCES.items()]),
        "body": TextAreaField(_("正文"), widget=BS3TextAreaFieldWidget()),
        "pinned": checkbox(_("置顶")),
        "active": checkbox(_("启用"), default=True),
    }


class AnnouncementView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(Announcement)
    route_base = "/announcements"
    audit_target = "announcement"
    audit_columns = ["title", "body", "audience", "pinned", "starts_at", "ends_at", "active"]
    list_title = show_title = add_title = edit_title = _("公告")
    list_columns = ["title", "audience_display", "pinned", "starts_at", "ends_at", "active"]
    show_columns = ["title", "body", "audience_display", "pinned", "starts_at", "ends_at", "active", "created_at"]
    add_columns = edit_columns = ["title", "body", "audience", "pinned", "starts_at", "ends_at", "active"]
    search_columns = ["title", "audience", "active", "starts_at"]
    label_columns = {"title": _("标题"), "body": _("正文"), "audience": _("公告对象"),
                     "audience_display": _("公告对象"), "pinned": _("置顶"), "starts_at": _("开始（UTC）"),
                     "ends_at": _("结束（UTC，空为不限）"), "active": _("启用"), "created_at": _("创建时间")}
    description_columns = {"body": _("纯文本，最多 2000 个字符；显示时不解析 HTML")}
    add_form_extra_fields = _fields()
    edit_form_extra_fields = _fields()
    base_order = ("id", "desc")

    def pre_add(self, item):
        service.check(item)
        super().pre_add(item)

    def pre_update(self, item):
        service.check(item)
        super().pre_update(item)

from __future__ import annotations

from flask_appbuilder import ModelView
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _

from app.audit.models import AuditEntry
from app.views_common import ReadableColumnsMixin


class AuditView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(AuditEntry)
    route_base = "/audit"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("审计日志")
    list_columns = ["created_at", "actor", "action", "target_type", "target_id", "reason"]
    show_columns = ["created_at", "actor", "action", "target_type", "target_id", "old_value", "new_value", "reason"]
    search_columns = ["action", "target_type", "target_id", "actor", "created_at"]
    label_columns = {"created_at": _("时间"), "actor": _("操作人"), "action": _("操作"), "target_type": _("对象类型"),
                     "target_id": _("对象"), "old_value": _("原值"), "new_value": _("新值"), "reason": _("原因")}
    base_order = ("id", "desc")

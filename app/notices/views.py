"""发货通知: support's list of delivery e-mails and SMS (the menu opens the failed ones), with a resend action."""
from __future__ import annotations

from flask import abort, flash, g, redirect, url_for
from flask_appbuilder import ModelView, action
from flask_babel import gettext
from flask_babel import lazy_gettext as _

from app.errors import KamengError
from app.notices import service as notices
from app.notices.models import KINDS, STATUSES, DeliveryNotice
from app.views_common import ReadableColumnsMixin, blind_index_interface, text_of

FAILED_LIST = "/delivery-notices/list/?_flt_3_status=failed"  # FAB's 4th string filter is "equal"


class DeliveryNoticeView(ReadableColumnsMixin, ModelView):
    """Every delivery notice and where it stands; the address shows masked, search takes it whole (blind index)."""
    datamodel = blind_index_interface(DeliveryNotice, "recipient_hash", ("recipient_hash",))
    route_base = "/delivery-notices"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("发货通知")
    list_columns = ["created_at", "order", "kind", "recipient_masked", "status", "attempts", "last_error",
                    "sent_at"]
    show_columns = ["order", "kind", "recipient_masked", "locale", "status", "attempts", "resends", "last_error",
                    "next_attempt_at", "sent_at", "created_at", "updated_at"]
    search_columns = ["status", "recipient_hash", "kind", "order", "created_at"]
    label_columns = {"created_at": _("时间"), "order": _("订单"), "kind": _("方式"), "recipient_masked": _("收件人"),
                     "recipient_hash": _("邮箱 / 手机号"), "status": _("状态"), "attempts": _("尝试次数"),
                     "resends": _("重发次数"), "last_error": _("最近错误"), "next_attempt_at": _("下次尝试"),
                     "sent_at": _("发送时间"), "locale": _("语言"), "updated_at": _("更新时间")}
    formatters_columns = {"kind": text_of(KINDS), "status": text_of(STATUSES)}
    base_order = ("id", "desc")

    @action("resend", _("重新发送"), _("重新发送所选通知？（仅限已到账的订单）"), "fa-paper-plane", multiple=True)
    def resend(self, items):
        # FAB loads the rows by primary key without the view's filters: the role is checked again here, and the
        # service checks each row (failed or sent, order still delivered) under its lock.
        if not self.appbuilder.sm.has_access("resend", self.class_permission_name):
            abort(403)
        for item in items if isinstance(items, list) else [items]:
            try:
                notices.resend(item.id, g.user.id)
            except KamengError as exc:
                flash(f"{item.recipient_masked}: {exc.message}", "danger")
            else:
                flash(gettext("已重新发送至 %(to)s", to=item.recipient_masked), "success")
        return redirect(url_for("DeliveryNoticeView.list"))


def register(appbuilder) -> None:
    appbuilder.add_view(DeliveryNoticeView, "发货通知失败", href=FAILED_LIST, icon="fa-envelope", category="订单与售后")

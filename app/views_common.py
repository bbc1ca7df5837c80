"""Display helpers for FAB list and show screens: operators read words (是/否, 待审核, 支付宝), never the raw value
(True, None, pending_review, alipay). Formatters only change what a cell shows: search, filters and sorting still
work on the stored codes."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from flask_babel import gettext
from flask_babel import lazy_gettext as _

# Payment channels as orders, payments, refunds and top-ups store them (app.payments.models.CHANNEL_NAMES).
CHANNEL_TEXT = {"sandbox": _("沙箱支付"), "alipay": _("支付宝"), "wechatpay": _("微信支付"), "unionpay": _("银联"),
                "wallet": _("钱包余额")}


def dash(value):
    """An empty value shows as '-', anything else as it is."""
    return "-" if value is None or value == "" else value


def yes_no(value) -> str:
    if value is None:
        return "-"
    return gettext("是") if value else gettext("否")


def text_of(table: Mapping) -> Callable:
    """A formatter showing a code's label from `table` (an unknown code as it is, None as '-')."""
    return lambda value: "-" if value is None else table.get(value, value)


class ReadableColumnsMixin:
    """Every listed or shown column the view did not format itself: booleans as 是/否, None as '-'.
    Put it first among a ModelView's bases."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        own = self.formatters_columns
        columns = [*self.list_columns, *self.show_columns]
        defaults = {col: yes_no if self.datamodel.is_boolean(col) else dash for col in columns if col not in own}
        self.formatters_columns = {**defaults, **own}

"""Display helpers for FAB list and show screens: operators read words (是/否, 待审核, 支付宝), never the raw value
(True, None, pending_review, alipay). Formatters only change what a cell shows: search, filters and sorting still
work on the stored codes."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from flask_babel import gettext
from flask_babel import lazy_gettext as _

# Payment channels as orders, payments, refunds and top-ups store them (app.payments.models.CHANNEL_NAMES).
CHANNEL_TEXT = {"sandbox": _("沙箱支付"), "alipay": _("支付宝"), "wechatpay": _("微信支付"), "unionpay": _("银联"),
                "epay": _("易支付"), "wallet": _("钱包余额")}


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


# --- personal data: search by a blind index ---------------------------------------------------------------------

def blind_index_interface(model, search_column: str, hash_columns: tuple[str, ...]):
    """A FAB datamodel for `model` whose search on `search_column` takes a phone number, contact or account in any
    spelling, hashes it the way it was stored (app.crypto.pii_hash) and matches it against `hash_columns` (blind
    indexes of encrypted columns); the plaintext is never compared. It works from the search box and from a list
    URL (`_flt_0_<search_column>=<value>`)."""
    from flask_appbuilder.models.filters import BaseFilter
    from flask_appbuilder.models.sqla.filters import SQLAFilterConverter
    from flask_appbuilder.models.sqla.interface import SQLAInterface
    from sqlalchemy import or_

    from app.crypto import pii_hash

    class FilterBlindIndex(BaseFilter):
        name = _("等于")

        def apply(self, query, value):
            value_hash = pii_hash(value)
            if value_hash is None:
                return query
            return query.filter(or_(*(getattr(model, c) == value_hash for c in hash_columns)))

    class Converter(SQLAFilterConverter):
        def convert(self, col_name):
            if col_name == search_column:
                return [FilterBlindIndex(col_name, self.datamodel)]
            return super().convert(col_name)

    class Interface(SQLAInterface):
        filter_converter_class = Converter

    return Interface(model)


# Staff who act on a whole phone number, contact or top-up account: support calls the buyer or the agent back and
# checks a top-up with the supplier, and the admin can do what support does. Everyone else on a staff screen
# (Manager reads, Finance approves money) sees it masked.
WHOLE_VALUE_ROLES = frozenset({"Admin", "Support"})


def personal_value(value) -> str:
    """A formatter for a personal value on a staff screen: whole for WHOLE_VALUE_ROLES, masked (app.crypto.mask)
    for other staff, '-' when empty."""
    from flask import g

    from app.crypto import mask

    if value is None or value == "":
        return "-"
    roles = {role.name for role in getattr(getattr(g, "user", None), "roles", None) or ()}
    return value if roles & WHOLE_VALUE_ROLES else mask(value)

"""Read-only ledger screens: accounts, journals, postings."""
from __future__ import annotations

from flask_appbuilder import ModelView
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _

from app.ledger.models import Account, Journal, Posting
from app.money import format_fen

READ_ONLY = ["can_list", "can_show"]


class PostingView(ModelView):
    datamodel = SQLAInterface(Posting)
    route_base = "/ledger/postings"
    base_permissions = READ_ONLY
    list_title = show_title = _("分录")
    list_columns = ["id", "journal", "account", "amount", "created_at"]
    show_columns = list_columns
    search_columns = ["account", "journal", "created_at"]
    label_columns = {"journal": _("凭证"), "account": _("账户"), "amount": _("金额"), "created_at": _("时间")}
    formatters_columns = {"amount": format_fen}
    base_order = ("id", "desc")


class JournalView(ModelView):
    datamodel = SQLAInterface(Journal)
    route_base = "/ledger/journals"
    base_permissions = READ_ONLY
    list_title = show_title = _("凭证")
    list_columns = ["id", "idempotency_key", "kind", "memo", "order", "actor", "created_at"]
    show_columns = list_columns + ["content_hash"]
    search_columns = ["idempotency_key", "kind", "memo", "created_at"]
    label_columns = {"idempotency_key": _("幂等键"), "kind": _("类型"), "memo": _("摘要"), "order": _("订单"),
                     "actor": _("操作人"), "created_at": _("时间"), "content_hash": _("内容摘要")}
    related_views = [PostingView]
    base_order = ("id", "desc")


class AccountView(ModelView):
    datamodel = SQLAInterface(Account)
    route_base = "/ledger/accounts"
    base_permissions = READ_ONLY
    list_title = show_title = _("账户")
    list_columns = ["code", "kind", "agent", "supplier", "cached", "balance"]
    show_columns = list_columns + ["created_at"]
    search_columns = ["code", "kind", "agent", "supplier"]
    label_columns = {"code": _("账户代码"), "kind": _("类型"), "agent": _("代理"), "supplier": _("供应商"),
                     "cached": _("缓存余额"), "balance": _("余额（缓存）"), "created_at": _("开户时间")}
    formatters_columns = {"balance": format_fen}
    related_views = [PostingView]
    base_order = ("id", "asc")

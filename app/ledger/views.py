"""Read-only ledger screens: accounts, journals, postings."""
from __future__ import annotations

from flask_appbuilder import ModelView
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _

from app.ledger.models import Account, Journal, Posting
from app.money import format_fen
from app.views_common import ReadableColumnsMixin, text_of

READ_ONLY = ["can_list", "can_show"]
# What each journal kind and account kind is called on the screens (the codes stay as posted).
JOURNAL_KIND_TEXT = {
    "sale": _("销售"), "hold": _("下单预扣"), "sale_reversal": _("销售冲回"), "payment": _("支付入账"),
    "refund": _("退款"), "topup": _("充值"), "adjustment": _("余额调整"), "commission_accrual": _("佣金计提"),
    "commission_reversal": _("佣金冲回"), "commission_freeze": _("佣金冻结"), "commission_release": _("佣金解冻"),
    "settlement": _("佣金结算"), "team_bonus": _("团队业绩奖"), "withdrawal_freeze": _("提现冻结"),
    "withdrawal_paid": _("提现打款"), "withdrawal_release": _("提现驳回解冻"), "dispute_freeze": _("维权冻结"),
    "dispute_release": _("维权解冻"), "shop_profit": _("分站利润"), "shop_profit_reversal": _("分站利润冲回"),
}
ACCOUNT_KIND_TEXT = {
    "wallet": _("余额"), "pending": _("待结算佣金"), "frozen": _("冻结"), "payable": _("应付供应商"),
    "receivable": _("应收"), "clearing": _("支付通道清算"), "revenue": _("平台收入"), "fees": _("手续费收入"),
    "commission_expense": _("佣金支出"), "payouts": _("提现打款"), "adjustments": _("人工调整"),
    "buyer_funds": _("买家待确认款"), "disputes_held": _("维权冻结应付"), "shop_profit_expense": _("分站利润支出"),
}


class PostingView(ReadableColumnsMixin, ModelView):
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


class JournalView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(Journal)
    route_base = "/ledger/journals"
    base_permissions = READ_ONLY
    list_title = show_title = _("凭证")
    list_columns = ["id", "idempotency_key", "kind", "memo", "order", "actor", "created_at"]
    show_columns = list_columns + ["content_hash"]
    search_columns = ["idempotency_key", "kind", "memo", "created_at"]
    label_columns = {"idempotency_key": _("幂等键"), "kind": _("类型"), "memo": _("摘要"), "order": _("订单"),
                     "actor": _("操作人"), "created_at": _("时间"), "content_hash": _("内容摘要")}
    formatters_columns = {"kind": text_of(JOURNAL_KIND_TEXT)}
    related_views = [PostingView]
    base_order = ("id", "desc")


class AccountView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(Account)
    route_base = "/ledger/accounts"
    base_permissions = READ_ONLY
    list_title = show_title = _("账户")
    list_columns = ["code", "kind", "agent", "supplier", "cached", "balance"]
    show_columns = list_columns + ["created_at"]
    search_columns = ["code", "kind", "agent", "supplier"]
    label_columns = {"code": _("账户代码"), "kind": _("类型"), "agent": _("代理"), "supplier": _("供应商"),
                     "cached": _("缓存余额"), "balance": _("余额（缓存）"), "created_at": _("开户时间")}
    formatters_columns = {"balance": format_fen, "kind": text_of(ACCOUNT_KIND_TEXT)}
    related_views = [PostingView]
    base_order = ("id", "asc")

"""Support and admin screen for orders: find any order fast (number, agent, status, dates)."""
from __future__ import annotations

from flask_appbuilder import ModelView
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _

from app.orders.models import Order

ORDER_LABELS = {
    "order_no": _("订单号"), "agent": _("代理"), "product": _("商品"), "supplier": _("供应商"), "tier": _("等级"),
    "quantity": _("数量"), "unit_price_display": _("单价"), "amount_display": _("金额"), "status": _("状态"),
    "status_display": _("状态"), "channel": _("支付方式"), "out_trade_no": _("商户订单号"),
    "account": _("充值账号"), "contact": _("联系方式"), "created_at": _("下单时间"), "paid_at": _("支付时间"),
    "delivered_at": _("到账时间"), "upline_path": _("上级链"), "card_secrets": _("卡密"),
}


class OrderView(ModelView):
    """Staff view: card secrets appear masked (their relation renders CardSecret.masked, never the plain text)."""
    datamodel = SQLAInterface(Order)
    route_base = "/orders"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("订单")
    list_columns = ["order_no", "agent", "product", "quantity", "amount_display", "status_display", "channel",
                    "created_at"]
    show_columns = ["order_no", "agent", "product", "supplier", "tier", "quantity", "unit_price_display",
                    "amount_display", "status_display", "channel", "out_trade_no", "account", "contact",
                    "upline_path", "created_at", "paid_at", "delivered_at"]
    search_columns = ["order_no", "agent", "product", "status", "channel", "out_trade_no", "created_at"]
    label_columns = ORDER_LABELS
    base_order = ("id", "desc")

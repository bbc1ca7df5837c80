"""Support and admin screen for orders: find any order fast (number, agent, status, dates)."""
from __future__ import annotations

from flask_appbuilder import ModelView
from flask_babel import lazy_gettext as _

from app.extensions import db
from app.orders.models import Order
from app.views_common import CHANNEL_TEXT, ReadableColumnsMixin, blind_index_interface, personal_value, text_of

ORDER_LABELS = {
    "order_no": _("订单号"), "agent": _("代理"), "product": _("商品"), "supplier": _("供应商"), "tier": _("等级"),
    "quantity": _("数量"), "unit_price_display": _("单价"), "amount_display": _("金额"), "status": _("状态"),
    "status_display": _("状态"), "channel": _("支付方式"), "out_trade_no": _("商户订单号"),
    "account": _("充值账号"), "contact": _("联系方式"), "created_at": _("下单时间"), "paid_at": _("支付时间"),
    "delivered_at": _("到账时间"), "upline_path": _("上级链"), "card_secrets": _("卡密"),
    "upstream_status": _("上游状态"), "delivery_time_display": _("到账用时"),
    "contact_hash": _("手机号 / 联系方式 / 充值账号"),
    "shop": _("分站"), "shop_base_display": _("代理拿货价合计"), "shop_profit_display": _("分站利润"),
}



def upstream_status_text(status: str | None) -> str:
    from app.suppliers.models import UPSTREAM_STATUSES

    return UPSTREAM_STATUSES.get(status, status) if status else "-"


class OrderView(ReadableColumnsMixin, ModelView):
    """Staff view: card secrets appear masked (their relation renders CardSecret.masked, never the plain text).

    The order page shows the buyer's contact and the top-up account whole to support and the admin, who act on
    them (call the buyer back, check a top-up with the supplier), masked to other staff
    (views_common.personal_value). Search finds an order by either of them through their blind indexes
    (views_common.blind_index_interface)."""
    datamodel = blind_index_interface(Order, "contact_hash", ("contact_hash", "account_hash"))
    route_base = "/orders"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("订单")
    list_columns = ["order_no", "agent", "product", "quantity", "amount_display", "status_display", "upstream_status",
                    "channel", "created_at"]
    show_columns = ["order_no", "agent", "product", "supplier", "tier", "quantity", "unit_price_display",
                    "amount_display", "status_display", "upstream_status", "channel", "out_trade_no", "account",
                    "contact", "upline_path", "shop", "shop_base_display", "shop_profit_display", "created_at",
                    "paid_at", "delivered_at", "delivery_time_display"]
    search_columns = ["order_no", "contact_hash", "agent", "product", "status", "upstream_status", "channel",
                      "out_trade_no", "shop", "created_at"]
    label_columns = ORDER_LABELS
    formatters_columns = {"upstream_status": upstream_status_text, "channel": text_of(CHANNEL_TEXT),
                          "contact": personal_value, "account": personal_value}
    base_order = ("id", "desc")
    show_template = "kameng/order_show.html"

    def render_template(self, template, **kwargs):
        # Direct top-ups: where the upstream stands, each supplier attempt and the event timeline, under the
        # order's details. show() has loaded the order through this view's filters before rendering.
        if template == self.show_template and kwargs.get("pk") is not None:
            from app.suppliers import service as suppliers

            order = db.session.get(Order, kwargs["pk"])
            if order is not None and (order.product.kind == "direct" or order.upstream_status):
                kwargs["timeline"] = suppliers.timeline(order.id)
        return super().render_template(template, **kwargs)

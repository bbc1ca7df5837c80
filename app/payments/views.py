"""Admin and support screens for payments: channel keys, payments, notifications (alerts), refunds, manual
confirmation. Handlers translate forms into app.payments.service calls."""
from __future__ import annotations

from flask import abort, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, action, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import select

from app.errors import KamengError
from app.extensions import db
from app.money import format_fen
from app.orders.models import Order
from app.payments import refunds, service
from app.payments.models import CHANNEL_NAMES, Payment, PaymentAlert, PaymentChannel, PaymentNotification, Refund
from app.views_common import CHANNEL_TEXT, ReadableColumnsMixin, text_of

# Per channel: (setting, label, secret?, multiline?)
CHANNEL_FIELDS = {
    "sandbox": [("key", _("签名密钥 (HMAC key)"), True, False)],
    "alipay": [("app_id", "APPID", False, False), ("private_key", _("应用私钥 (PEM)"), True, True),
               ("alipay_public_key", _("支付宝公钥 (PEM)"), False, True),
               ("seller_id", _("商户 PID（2088 开头，选填：校验通知的 seller_id）"), False, False),
               ("gateway", _("网关地址（留空为正式环境）"), False, False)],
    "wechatpay": [("appid", "AppID", False, False), ("mchid", _("商户号 mchid"), False, False),
                  ("serial_no", _("商户证书序列号"), False, False), ("private_key", _("商户私钥 (PEM)"), True, True),
                  ("api_v3_key", _("APIv3 密钥（32 位）"), True, False),
                  ("platform_keys",
                   _("平台公钥：每行 序列号=PEM 文件内容 的 JSON，如 {\"SERIAL\": \"-----BEGIN ...\"}"), False, True),
                  ("api_base", _("接口地址（留空为正式环境）"), False, False)],
    "unionpay": [("mer_id", _("商户号 merId"), False, False), ("private_key", _("签名私钥 (PEM)"), True, True),
                 ("sign_cert", _("签名证书 (PEM，certId 取其序列号)"), False, True),
                 ("middle_cert", _("银联中级证书 (PEM)"), False, True),
                 ("root_cert", _("银联根证书 (PEM)"), False, True),
                 ("gateway", _("网关地址（留空为正式环境）"), False, False),
                 ("file_gateway", _("对账文件地址（留空为正式环境）"), False, False)],
    "epay": [("pid", _("商户ID pid"), False, False), ("key", _("商户密钥 KEY"), True, False),
             ("gateway", _("接口地址（易支付站点，如 https://pay.example.com/）"), False, False),
             ("pay_type", _("支付方式 type：alipay / wxpay / qqpay（留空由收银台选择）"), False, False),
             ("mode", _("下单方式：submit（页面跳转）或 mapi（服务端下单）"), False, False),
             ("refund_api", _("接口退款：yes（支持 api.php?act=refund）或 no（在商户后台人工退款）"), False, False),
             ("sitename", _("网站名称 sitename（选填）"), False, False)],
}


class PaymentChannelView(BaseView):
    """Keys and settings per channel, stored encrypted. Secrets are never shown again; blank keeps the old one."""
    route_base = "/payment-channels"
    default_view = "index"

    @expose("/")
    @has_access
    def index(self):
        rows = {c: service.channel_row(c) for c in service.CHANNEL_CODES if service.channel_exists(c)}
        db.session.commit()
        return self.render_template("kameng/payment_channels.html", rows=rows, names=CHANNEL_NAMES,
                                    can_edit=self.appbuilder.sm.has_access("can_edit", "PaymentChannelView"))

    @expose("/<code>", methods=["GET", "POST"])
    @has_access
    def edit(self, code: str):
        if code not in CHANNEL_FIELDS or not service.channel_exists(code):  # no sandbox in production
            abort(404)
        current = service.channel_settings(code)
        if request.method == "POST":
            settings = dict(current)
            try:
                for name, _label, secret, _multi in CHANNEL_FIELDS[code]:
                    value = (request.form.get(name) or "").strip()
                    if secret and not value:
                        continue  # blank: keep the stored secret
                    settings[name] = _parse_setting(name, value)
                service.save_channel(code, request.form.get("enabled") == "y", settings, actor_id=g.user.id)
            except KamengError as exc:
                flash(exc.message, "danger")
            else:
                flash(gettext("%(channel_names)s 设置已保存", channel_names=CHANNEL_NAMES[code]), "success")
                return redirect(url_for("PaymentChannelView.index"))
        row = service.channel_row(code)
        db.session.commit()
        return self.render_template("kameng/payment_channel_edit.html", code=code, name=CHANNEL_NAMES[code],
                                    row=row, fields=CHANNEL_FIELDS[code], current=current)


def _parse_setting(name: str, value: str):
    import json

    from app.errors import ValidationError

    if name == "platform_keys":
        try:
            keys = json.loads(value or "{}")
        except ValueError:
            raise ValidationError(gettext("平台公钥须为 JSON 对象：{\"SERIAL\": \"PEM\"}")) from None
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise ValidationError(gettext("平台公钥须为 JSON 对象：{\"SERIAL\": \"PEM\"}"))
        return keys
    if name == "api_v3_key" and value and len(value) != 32:
        raise ValidationError(gettext("APIv3 密钥必须是 32 个字符"))
    if name == "key" and value and len(value) < 8:
        raise ValidationError(gettext("签名密钥至少 8 个字符"))
    if name == "pay_type" and value not in ("", "alipay", "wxpay", "qqpay"):
        raise ValidationError(gettext("支付方式 type 须为 alipay、wxpay、qqpay 或留空"))
    if name == "mode" and value not in ("", "submit", "mapi"):
        raise ValidationError(gettext("下单方式须为 submit 或 mapi"))
    if name == "refund_api" and value not in ("", "yes", "no"):
        raise ValidationError(gettext("接口退款须为 yes 或 no"))
    if name == "pid" and value and not value.isdigit():
        raise ValidationError(gettext("商户ID pid 须为数字"))
    return value


class RefundFormView(BaseView):
    """Finance refunds an order in full, with a reason, to where the money came from."""
    route_base = "/order-refund"
    default_view = "form"

    @expose("/<order_no>", methods=["GET", "POST"])
    @has_access
    def form(self, order_no: str):
        order = db.session.scalar(select(Order).where(Order.order_no == order_no[:40]))
        if order is None:
            abort(404)
        if request.method == "POST":
            try:
                refund = service.refund_order(order.id, request.form.get("reason", ""), g.user.id)
            except KamengError as exc:
                flash(exc.message, "danger")
            else:
                where = CHANNEL_NAMES.get(refund.destination, refund.destination)
                flash(gettext("已退款 %(amount)s 至 %(where)s",
                              amount=format_fen(refund.amount), where=where), "success")
                return redirect(url_for("OrderView.show", pk=order.id))
        return self.render_template("kameng/order_refund.html", order=order)


class ManualConfirmView(BaseView):
    """An admin confirms a payment seen in the channel's back office (same path as a notification; audited)."""
    route_base = "/payment-confirm"
    default_view = "form"

    @expose("/", methods=["GET", "POST"])
    @has_access
    def form(self):
        if request.method == "POST":
            try:
                outcome = service.confirm_manually(request.form.get("order_no", ""), request.form.get("trade_no", ""),
                                                   g.user.id)
            except KamengError as exc:
                flash(exc.message, "danger")
            else:
                level = "success" if outcome == "accepted" else "warning"
                flash(gettext("处理结果：%(outcome)s", outcome=outcome), level)
        return self.render_template("kameng/payment_confirm.html", form=request.form)


PAYMENT_STATUS_TEXT = {"paid": _("已支付"), "refunding": _("退款中"), "refunded": _("已退款")}
NOTIFICATION_OUTCOME_TEXT = {
    "accepted": _("已入账"), "duplicate": _("重复通知"), "rejected": _("已拒绝"), "not_paid": _("未支付"),
    "unknown_order": _("未知订单"), "amount_mismatch": _("金额不符"), "late_refunded": _("逾期支付，已退款"),
    "double_paid_refunded": _("重复支付，已退款"), "out_of_stock_refunded": _("缺货，已退款"),
    "held_for_review": _("已收款，风控审核中"),
    "refund_accepted": _("退款通知已处理"), "refund_duplicate": _("重复退款通知"),
    "refund_unknown_refund": _("未知退款"), "refund_amount_mismatch": _("退款金额不符"),
}
REFUND_STATUS_TEXT = {"requested": _("已申请"), "processing": _("渠道处理中"), "succeeded": _("退款成功"),
                      "failed": _("退款失败")}
ALERT_KIND_TEXT = {"refund_failed": _("退款失败"), "refund_abnormal": _("退款异常"), "refund_stuck": _("退款无应答"),
                   "refund_manual": _("需人工退款")}


class PaymentView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(Payment)
    route_base = "/payments"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("收款记录")
    list_columns = ["created_at", "channel", "trade_no", "order", "amount", "status", "confirmed_by"]
    show_columns = list_columns + ["currency"]
    search_columns = ["channel", "trade_no", "order", "status", "created_at"]
    label_columns = {"created_at": _("时间"), "channel": _("渠道"), "trade_no": _("渠道交易号"), "order": _("订单"),
                     "amount": _("金额"), "status": _("状态"), "confirmed_by": _("人工确认人"), "currency": _("币种")}
    formatters_columns = {"amount": format_fen, "channel": text_of(CHANNEL_TEXT),
                          "status": text_of(PAYMENT_STATUS_TEXT)}
    base_order = ("id", "desc")


class PaymentNotificationView(ReadableColumnsMixin, ModelView):
    """Every notification and what became of it; amount_mismatch and rejected rows are the alerts."""
    datamodel = SQLAInterface(PaymentNotification)
    route_base = "/payment-notifications"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("支付通知 / 告警")
    list_columns = ["created_at", "channel", "order_no", "trade_no", "amount", "outcome", "detail", "remote_addr"]
    show_columns = list_columns
    search_columns = ["channel", "order_no", "trade_no", "outcome", "created_at"]
    label_columns = {"created_at": _("时间"), "channel": _("渠道"), "order_no": _("订单号"),
                     "trade_no": _("渠道交易号"), "amount": _("金额"), "outcome": _("结果"), "detail": _("说明"),
                     "remote_addr": _("来源地址")}
    formatters_columns = {"amount": format_fen, "channel": text_of(CHANNEL_TEXT),
                          "outcome": text_of(NOTIFICATION_OUTCOME_TEXT)}
    base_order = ("id", "desc")


class RefundView(ReadableColumnsMixin, ModelView):
    """Refunds and where each stands with its channel; a failed one can be asked again (a new refund number)."""
    datamodel = SQLAInterface(Refund)
    route_base = "/refunds"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("退款记录")
    list_columns = ["created_at", "order", "amount", "destination", "status", "out_refund_no", "attempts", "reason",
                    "actor"]
    show_columns = list_columns + ["payment", "channel_refund_no", "last_error", "next_attempt_at", "updated_at",
                                   "finished_at"]
    search_columns = ["order", "destination", "status", "out_refund_no", "created_at"]
    label_columns = {"created_at": _("时间"), "order": _("订单"), "amount": _("金额"), "destination": _("退回至"),
                     "reason": _("原因"), "actor": _("操作人"), "status": _("状态"), "out_refund_no": _("退款单号"),
                     "attempts": _("渠道请求次数"), "payment": _("原收款"), "channel_refund_no": _("渠道退款单号"),
                     "last_error": _("最近错误"), "next_attempt_at": _("下次查询"), "updated_at": _("更新时间"),
                     "finished_at": _("完成时间")}
    formatters_columns = {"amount": format_fen, "destination": text_of(CHANNEL_TEXT),
                          "status": text_of(REFUND_STATUS_TEXT)}
    base_order = ("id", "desc")

    @action("retry", _("重新发起退款"), _("向渠道重新发起所选的失败退款？"), "fa-repeat", multiple=True)
    def retry(self, items):
        items = items if isinstance(items, list) else [items]
        for item in items:
            try:
                refunds.retry(item.id, g.user.id)
            except KamengError as exc:
                flash(f"{item.out_refund_no or item.id}: {exc.message}", "danger")
            else:
                flash(gettext("%(out_refund_no)s 已重新发起", out_refund_no=item.out_refund_no), "success")
        return redirect(url_for("RefundView.list"))

    @action("confirm_paid", _("确认已退款"), _("确认渠道已通过其他方式（如异常退款处理）退回所选退款？将记账。"),
            "fa-check", multiple=False)
    def confirm_paid(self, item):
        try:
            # i18n-keep: data
            refunds.confirm_paid(item.id, g.user.id, request.args.get("note") or "渠道商户平台已处理（后台确认）")
        except KamengError as exc:
            flash(exc.message, "danger")
        else:
            flash(gettext("%(out_refund_no)s 已确认退款并记账", out_refund_no=item.out_refund_no), "success")
        return redirect(url_for("RefundView.show", pk=item.id))


class PaymentAlertView(ReadableColumnsMixin, ModelView):
    """Payments that need a person: failed or abnormal refunds, refunds a channel keeps not answering."""
    datamodel = SQLAInterface(PaymentAlert)
    route_base = "/payment-alerts"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("支付告警")
    list_columns = ["created_at", "kind", "channel", "order_no", "refund", "message", "resolved_at"]
    show_columns = list_columns
    search_columns = ["kind", "channel", "order_no", "created_at"]
    label_columns = {"created_at": _("时间"), "kind": _("类型"), "channel": _("渠道"), "order_no": _("单号"),
                     "refund": _("退款"), "message": _("说明"), "resolved_at": _("处理时间")}
    formatters_columns = {"kind": text_of(ALERT_KIND_TEXT), "channel": text_of(CHANNEL_TEXT)}
    base_order = ("id", "desc")


def register(appbuilder) -> None:
    category = "资金"  # app.views.MONEY
    appbuilder.add_view(PaymentView, "收款记录", icon="fa-credit-card", category=category, category_icon="fa-money")
    appbuilder.add_view(PaymentNotificationView, "支付通知", icon="fa-bell", category=category)
    appbuilder.add_view(RefundView, "退款记录", icon="fa-undo", category=category)
    appbuilder.add_view(PaymentAlertView, "支付告警", icon="fa-exclamation-triangle", category=category)
    appbuilder.add_view(ManualConfirmView, "人工确认收款", href="/payment-confirm/", icon="fa-check", category=category)
    appbuilder.add_view(PaymentChannelView, "支付渠道设置", href="/payment-channels/", icon="fa-cog",
                        category=category)
    appbuilder.add_view_no_menu(RefundFormView)
    appbuilder.add_link("商城首页", href="/shop/", icon="fa-shopping-cart", category=category)
    from app.payments import dispute_views  # disputes (售后) and coupons
    dispute_views.register(appbuilder)
    from app.payments import recon_views  # 对账, 充值记录, the sandbox cashier for top-ups
    recon_views.register(appbuilder)


__all__ = ["PaymentChannel"]

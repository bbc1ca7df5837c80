"""Storefront for buyers without an account: JSON API (/shop/api), pages (/shop), payment notifications
(/pay/notify/<channel>) and the sandbox cashier. Handlers parse, call app.payments.service, render."""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

from flask import Blueprint, Flask, abort, current_app, jsonify, redirect, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from werkzeug.exceptions import HTTPException

from app.catalog.facts import product_facts
from app.catalog.service import price_for
from app.errors import KamengError, NotFound, ValidationError
from app.extensions import csrf, db
from app.headers import no_store
from app.orders.models import Order
from app.payments import service as payments
from app.payments.channels import sandbox
from app.payments.models import CHANNEL_NAMES
from app.portal.service import public_offers

shop = Blueprint("shop", __name__)
STATUS_TEXT = {"pending_payment": lazy_gettext("待支付"), "paid": lazy_gettext("已支付"),
               "delivering": lazy_gettext("发货中"), "delivered": lazy_gettext("已到账"),
               "refunded": lazy_gettext("已退款"), "closed": lazy_gettext("已关闭"),
               "failed": lazy_gettext("发货失败，退款中"), "disputed": lazy_gettext("处理中"),
               "reviewing": lazy_gettext("风控审核中")}


@dataclass(frozen=True)
class StorefrontPage:
    """Where the storefront's pages render: the platform's /shop/, or an agent's shop (app.agentshops), whose
    theme layout, links and prices they take. The same handlers and templates serve both."""
    layout: str = "kameng/shop/base.html"
    base: str = "/shop/"  # the path the page's links start from
    shop: object = None  # the AgentShop
    pricing: object = None  # its app.agentshops.service.ShopPricing

    def price(self, product) -> int:
        """The product's price here (ProductUnavailable when the shop hides it)."""
        return self.pricing.price(product).unit_price if self.pricing is not None else price_for(None, product)

    def owns(self, order: Order) -> bool:
        """A shop's lookup shows only its own orders (the platform's shows any)."""
        return self.shop is None or order.shop_id == self.shop.id


PLATFORM_PAGE = StorefrontPage()


def _base_url() -> str:
    return (current_app.config.get("PUBLIC_BASE_URL") or request.host_url).rstrip("/")


def _locale() -> str:
    """The storefront's language now (zh or en): the delivery e-mail is written in it."""
    from flask_babel import get_locale

    return str(get_locale() or "zh")


def _error(exc: KamengError):
    response = jsonify(exc.to_dict())
    response.status_code = exc.status if 400 <= exc.status < 500 else 400
    return response


def _json() -> dict:
    try:
        data = json.loads(request.get_data(cache=True).decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError("request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    return data


def order_view(order: Order, with_secrets: bool) -> dict:
    from app.catalog import cards

    status_text = STATUS_TEXT.get(order.status)
    data = {"order_no": order.order_no, "status": order.status, "status_text": status_text and str(status_text),
            "product_name": product_facts(order.product_id).name, "quantity": order.quantity,
            "amount": order.amount, "created_at": order.created_at.replace(microsecond=0).isoformat() + "Z"}
    if with_secrets:
        from app.chain import service as chain
        from app.payments import disputes

        data["card_secrets"] = cards.reveal(order.id) if order.status == "delivered" else []
        data["discount"] = order.discount
        data["dispute"] = disputes.public_view(disputes.for_order(order.id))  # with any compensation coupon
        from app.support import compensation

        data["compensation_coupons"] = compensation.coupons_for_order(order.id)  # a bulk compensation's coupon
        # The delivery's place in the tamper-evident chain: checkable at /trust/ against the day's head.
        record_hash = chain.delivery_hash(data["order_no"]) if order.delivered_at else None
        data["record_hash"] = record_hash
        data["trust_url"] = f"{_base_url()}/trust/record/{record_hash}" if record_hash else None
        db.session.commit()  # a reusable secret's reveal (cards.reveal) is recorded before the buyer sees it
    return data


# --- JSON API ----------------------------------------------------------------------------------------------

@shop.get("/shop/api/products")
def api_products():
    return jsonify({"products": public_offers()})


@shop.post("/shop/api/orders")
def api_create_order():
    return create_order_answer()


def create_order_answer(pricing=None):
    """POST /shop/api/orders, and an agent shop's POST /s/<code>/api/orders at its prices (`pricing`)."""
    try:
        data = _json()
        order, pay_url = payments.checkout(data.get("product_id"), data.get("quantity"), data.get("contact"),
                                           data.get("query_password"), data.get("channel"), _base_url(),
                                           coupon=data.get("coupon"), account=data.get("account"),
                                           device_id=data.get("device_id"), ip=request.remote_addr,
                                           email=data.get("email"), locale=_locale(), shop=pricing)
    except KamengError as exc:
        return _error(exc)
    # The signed lookup link goes only to whoever checked out (this answer): it shows the order without the password.
    response = jsonify({"order_no": order.order_no, "amount": order.amount, "discount": order.discount,
                        "pay_url": pay_url, "lookup_url": _base_url() + payments.lookup_path(order.order_no)})
    response.status_code = 201
    return response


@shop.post("/shop/api/disputes")
def api_create_dispute():
    """A buyer files a "not received" dispute: {order_no, query_password, reason}. Wrong password: 404."""
    from app.payments import disputes

    try:
        data = _json()
        dispute = disputes.open_as_buyer(data.get("order_no"), data.get("query_password"), data.get("reason"))
    except KamengError as exc:
        return _error(NotFound(_("订单不存在或密码错误")) if exc.status == 404 else exc)
    response = jsonify({"order_no": dispute.order.order_no, "order_status": dispute.order.status,
                        "dispute": disputes.public_view(dispute)})
    response.status_code = 201
    return response


@shop.post("/shop/api/lookup")
def api_lookup():
    try:
        data = _json()
        order = payments.lookup(data.get("order_no"), data.get("query_password"))
    except KamengError as exc:
        return _error(NotFound(_("订单不存在或密码错误")) if exc.status == 404 else exc)
    return _no_store(jsonify(order_view(order, with_secrets=True)))


# --- notifications, payment pages and the sandbox cashier --------------------------------------------------

# 易支付 notifies with a GET (the signed fields in the query string); every other channel POSTs.
GET_NOTIFY_CHANNELS = ("epay",)


@shop.route("/pay/notify/<channel>", methods=["GET", "POST"])
def notify(channel: str):
    if request.method == "GET" and channel not in GET_NOTIFY_CHANNELS:
        abort(405)
    return _notification(payments.handle_notification, channel)


@shop.post("/pay/refund-notify/<channel>")
def refund_notify(channel: str):
    return _notification(payments.handle_refund_notification, channel)


def _notification(handle, channel: str):
    if not payments.channel_exists(channel):  # the sandbox does not exist in production
        abort(404)
    fields = request.args.to_dict() if request.method == "GET" else request.form.to_dict()
    answer = handle(channel, request.headers, fields, request.get_data(cache=True), request.remote_addr)
    return current_app.response_class(answer.body, status=answer.status, content_type=answer.content_type)


@shop.get("/pay/wechatpay/qr/<number>")
def wechat_qr(number: str):
    """WeChat native pay: the QR code of the channel's code_url; the page polls and moves on once paid."""
    return _qr_page("wechatpay", number)


@shop.get("/pay/epay/qr/<number>")
def epay_qr(number: str):
    """易支付 mapi.php answered a QR code (qrcode) instead of a pay URL: the same page as WeChat's."""
    return _qr_page("epay", number)


def _qr_page(channel: str, number: str):
    import segno

    co = payments.channel_order(number)
    if co is None or co.channel != channel or not co.code_url:
        abort(404)
    state = payments.payment_state(co.out_trade_no)
    if state is None:
        abort(404)
    qr_svg = segno.make(co.code_url, error="m").svg_inline(scale=6, dark="#111", light="#fff")
    return render_template("kameng/shop/wechat_qr.html", co=co, qr_svg=qr_svg, state=state, channel=channel)


@shop.get("/pay/status/<number>")
def payment_status(number: str):
    """What a waiting payment page polls: paid or not, and where to go next. Never a card secret."""
    state = payments.payment_state(number)
    if state is None:
        abort(404)
    return no_store(jsonify(state))


@shop.get("/pay/go/<number>")
def pay_form(number: str):
    """A channel whose cashier the browser reaches by POSTing a signed form (UnionPay): the form, submitted at once."""
    co = payments.channel_order(number)
    if co is None or not co.form or co.status != "open":
        abort(404)
    return render_template("kameng/shop/pay_form.html", action=co.pay_url, fields=json.loads(co.form), co=co)


@shop.route("/shop/paid/<order_no>", methods=["GET", "POST"])
def shop_paid(order_no: str):
    """Where a channel sends the buyer back after paying (UnionPay with a form POST): the lookup, which asks for the
    order password (an agent shop's order: its shop's lookup). What the channel appended is ignored: the
    notification (or the query job) is what counts."""
    from app.agentshops import service as agentshops

    lookup = agentshops.lookup_path_of(order_no[:40]) or "/shop/lookup"
    return redirect(lookup + "?order_no=" + quote(order_no[:40], safe=""), code=303)


def _sandbox_only():
    if not payments.channel_exists("sandbox"):
        abort(404)


@shop.route("/pay/sandbox/cashier/<order_no>", methods=["GET", "POST"])
def sandbox_cashier(order_no: str):
    """The sandbox's cashier: pays or fails on a click by sending itself a signed notification. It never shows
    or links to the order's card secrets: afterwards the buyer goes to the lookup, which asks for the password."""
    _sandbox_only()
    order = db.session.query(Order).filter_by(order_no=order_no[:40], channel="sandbox").first()
    if order is None:
        abort(404)
    if request.method == "POST":
        if order.status == "pending_payment":
            key = payments.channel_settings("sandbox").get("key", "")
            fields = {"order_no": order.order_no, "trade_no": "SBX" + secrets.token_hex(10),
                      "amount": str(order.amount), "currency": "CNY",
                      "status": "SUCCESS" if request.form.get("result") == "pay" else "FAILED",
                      "ts": str(int(time.time())), "nonce": secrets.token_hex(8)}
            fields["sign"] = sandbox.sign(key, fields)
            payments.handle_notification("sandbox", {}, fields, b"", request.remote_addr)
        return redirect(f"/shop/paid/{order.order_no}")
    return render_template("kameng/shop/cashier.html", order=order, status_text=STATUS_TEXT)


# --- pages -------------------------------------------------------------------------------------------------

@shop.get("/shop/")
def shop_index():
    return render_template("kameng/shop/index.html", offers=public_offers(), page=PLATFORM_PAGE)


@shop.route("/shop/buy/<int:product_id>", methods=["GET", "POST"])
def shop_buy(product_id: int):
    return buy_page(product_id, PLATFORM_PAGE)


def buy_page(product_id: int, page: StorefrontPage):
    """A product's checkout form (and its POST): the storefront's, or an agent shop's at its prices."""
    from app.catalog.models import Product

    product = db.session.get(Product, product_id) if product_id < 2 ** 31 else None
    if product is None or not product.active:
        abort(404)
    try:
        price = page.price(product)
    except KamengError:  # hidden in this shop
        abort(404)
    channels = payments.enabled_channels()
    error = None
    if request.method == "POST":
        try:
            order, pay_url = payments.checkout(product.id, request.form.get("quantity", "1"),
                                               request.form.get("contact"), request.form.get("query_password"),
                                               request.form.get("channel"), _base_url(),
                                               coupon=request.form.get("coupon"),
                                               account=request.form.get("account"),
                                               device_id=request.form.get("device_id"),
                                               ip=request.remote_addr, email=request.form.get("email"),
                                               locale=_locale(), shop=page.pricing)
            return redirect(pay_url)
        except KamengError as exc:
            error = exc.message
    return render_template("kameng/shop/buy.html", product=product, price=price, page=page,
                           channels=[(c, CHANNEL_NAMES.get(c, c)) for c in channels], error=error,
                           form=request.form), (400 if error else 200)


@shop.route("/shop/lookup", methods=["GET", "POST"])
def shop_lookup():
    return lookup_page(PLATFORM_PAGE)


def lookup_page(page: StorefrontPage):
    """Order number + order password: the order and, once delivered, its card secrets (a shop: its own orders)."""
    order, error, status = None, None, 200
    form = request.form if request.method == "POST" else {"order_no": request.args.get("order_no", "")[:40]}
    if request.method == "POST":
        try:
            order = payments.lookup(request.form.get("order_no"), request.form.get("query_password"))
            if not page.owns(order):
                raise NotFound(_("订单不存在或密码错误"))
        except KamengError as exc:
            # The order number's budget spent: say so (and when); anything else reads as an unknown order.
            order = None
            error, status = (exc.message, 429) if exc.status == 429 else (_("订单不存在或密码错误"), 404)
    return _no_store(render_template("kameng/shop/lookup.html", order=order and order_view(order, True), error=error,
                                     form=form, page=page), status)


@shop.post("/shop/dispute")
def shop_dispute():
    return dispute_page(PLATFORM_PAGE)


def dispute_page(page: StorefrontPage):
    """The lookup page's dispute form: order number, query password again, and the reason."""
    from app.payments import disputes

    order, error, notice, limited, unknown = None, None, None, False, False
    try:
        if page.shop is not None and not page.owns(payments.lookup(request.form.get("order_no"),
                                                                   request.form.get("query_password"))):
            raise NotFound(_("订单不存在或密码错误"))  # a shop files disputes on its own orders only
        disputes.open_as_buyer(request.form.get("order_no"), request.form.get("query_password"),
                               request.form.get("reason"))
        notice = _("已提交维权，客服会尽快处理")
    except KamengError as exc:
        unknown = exc.status == 404
        error = _("订单不存在或密码错误") if unknown else exc.message
        limited = exc.status == 429  # the order number's lookup budget is spent (shared with the lookup)
    if notice or (error and not limited and not unknown):
        try:
            order = payments.lookup(request.form.get("order_no"), request.form.get("query_password"))
        except KamengError:
            order = None
    status = 201 if notice else 429 if limited else (404 if order is None else 400)
    return _no_store(render_template("kameng/shop/lookup.html", order=order and order_view(order, True), error=error,
                                     notice=notice, form=request.form, page=page), status)


@shop.get("/shop/order/<token>")
def shop_order(token: str):
    try:
        order = payments.order_from_token(token)
    except KamengError:
        abort(404)
    return _no_store(render_template("kameng/shop/order.html", order=order_view(order, True), token=token))


def _no_store(body, status: int = 200):
    """Answers that can carry card secrets are never cached by a browser or a proxy (app.headers also adds it to
    these paths; said here too so the view reads as what it is)."""
    return no_store(current_app.make_response((body, status)))


@shop.errorhandler(HTTPException)
def shop_http_error(exc: HTTPException):
    if request.path.startswith(("/shop/api/", "/pay/notify/", "/pay/refund-notify/", "/pay/status/")):
        return _error(KamengError(exc.description or exc.name, code="http_error", status=exc.code or 400))
    return exc


def refuse_nul():
    """A NUL character is never part of a real request (and PostgreSQL refuses it in text): 400, before any view."""
    if "\x00" in request.path or b"%00" in request.query_string or b"\x00" in request.query_string:
        return _nul_answer()
    if request.content_length and request.content_length <= 1024 * 1024 and request.method in ("POST", "PUT") \
            and request.mimetype in ("application/x-www-form-urlencoded", "application/json", "text/plain"):
        body = request.get_data(cache=True)  # files (statements, card imports) are multipart: not looked at
        if b"\x00" in body or b"%00" in body or b"\\u0000" in body:
            return _nul_answer()
    return None


shop.before_request(refuse_nul)


def _nul_answer():
    response = jsonify(ValidationError(_("请求含有非法字符")).to_dict())
    response.status_code = 400
    return response


def register(app: Flask) -> None:
    """CSRF off for the JSON API and notifications (no cookies involved); lookups and checkouts rate-limited."""
    limiter = app.appbuilder.sm.limiter
    csrf.exempt(api_create_order)
    csrf.exempt(api_lookup)
    csrf.exempt(notify)
    csrf.exempt(refund_notify)
    csrf.exempt(shop_paid)  # a cross-site form POST from the UnionPay cashier; it changes nothing
    csrf.exempt(api_create_dispute)
    limited = [limiter.limit(app.config["SHOP_LOOKUP_RATE_LIMIT"], methods=["POST"])(api_create_dispute),
               limiter.limit(app.config["SHOP_LOOKUP_RATE_LIMIT"], methods=["POST"])(shop_dispute)]
    limited += [limiter.limit(app.config["SHOP_LOOKUP_RATE_LIMIT"], methods=["POST"])(api_lookup),
                limiter.limit(app.config["SHOP_LOOKUP_RATE_LIMIT"], methods=["POST"])(shop_lookup),
                limiter.limit(app.config["SHOP_ORDER_RATE_LIMIT"], methods=["POST"])(api_create_order),
                limiter.limit(app.config["SHOP_ORDER_RATE_LIMIT"], methods=["POST"])(shop_buy),
                limiter.limit(app.config["NOTIFY_RATE_LIMIT"])(notify),
                limiter.limit(app.config["NOTIFY_RATE_LIMIT"])(refund_notify),
                limiter.limit(app.config["PAY_STATUS_RATE_LIMIT"])(payment_status)]
    app.register_blueprint(shop)
    # Flask-Limiter 4 enforces a decorated limit only inside the wrapper it returns: route the wrappers.
    for view in limited:
        app.view_functions[f"shop.{view.__name__}"] = view

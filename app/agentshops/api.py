"""An agent shop's public side at /s/<code>/ (or its approved domain, app.agentshops.hosts): its pages in its own
name and theme, and its JSON API, `GET /s/<code>/api/products` and `POST /s/<code>/api/orders`, which behave
exactly like the storefront's (/shop/api/products, /shop/api/orders) at the shop's prices.

The handlers are the storefront's own (app.shop.api: buy_page, lookup_page, dispute_page, create_order_answer)
given the shop's StorefrontPage; lookup and payment notifications stay the platform's (/shop/api/lookup,
/pay/notify/<channel>). A shop that does not sell now (suspended, its agent disabled or no longer allowed) answers
"shop closed" (403) on every page and refuses checkout."""
from __future__ import annotations

from flask import Blueprint, Flask, Response, abort, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from app.agentshops import service
from app.agentshops.models import AgentShop
from app.errors import KamengError
from app.extensions import csrf
from app.shop import api as storefront

public = Blueprint("agentshop", __name__)


def base_path(shop: AgentShop) -> str:
    """Where the shop's links start: "/" on its own approved domain, "/s/<code>/" on the platform's host."""
    from app.agentshops.hosts import SHOP_HOST_KEY

    return "/" if request.environ.get(SHOP_HOST_KEY) == shop.code else f"/s/{shop.code}/"


def _page(shop: AgentShop, pricing) -> storefront.StorefrontPage:
    return storefront.StorefrontPage(layout=f"kameng/agentshop/{shop.theme}/base.html", base=base_path(shop),
                                     shop=shop, pricing=pricing)


def _open(code: str) -> tuple[AgentShop, object]:
    """The shop and its pricing; 404 for an unknown code, the "shop closed" page (403) for a closed shop."""
    try:
        shop = service.by_code(code)
    except KamengError:
        abort(404)
    try:
        return shop, service.pricing(shop)
    except KamengError:
        abort(Response(render_template("kameng/agentshop/closed.html", shop=shop,
                                       lookup_url=storefront._base_url() + "/shop/lookup"), status=403))


def _json_shop(code: str):
    """For the JSON API: (shop, pricing, None) or (None, None, the error answer)."""
    try:
        shop = service.open_by_code(code)
        return shop, service.pricing(shop), None
    except KamengError as exc:
        return None, None, storefront._error(exc)


# --- JSON API ----------------------------------------------------------------------------------------------------

@public.get("/s/<code>/api/products")
def api_products(code: str):
    shop, _pricing, refused = _json_shop(code)
    if refused is not None:
        return refused
    return jsonify({"products": service.offers(shop)})


@public.post("/s/<code>/api/orders")
def api_create_order(code: str):
    _shop, pricing, refused = _json_shop(code)
    if refused is not None:
        return refused
    return storefront.create_order_answer(pricing)


# --- pages -------------------------------------------------------------------------------------------------------

@public.get("/s/<code>/")
def index(code: str):
    shop, pricing = _open(code)
    return render_template(f"kameng/agentshop/{shop.theme}/index.html", page=_page(shop, pricing),
                           offers=service.offers(shop))


@public.route("/s/<code>/buy/<int:product_id>", methods=["GET", "POST"])
def buy(code: str, product_id: int):
    shop, pricing = _open(code)
    return storefront.buy_page(product_id, _page(shop, pricing))


@public.route("/s/<code>/lookup", methods=["GET", "POST"])
def lookup(code: str):
    shop, pricing = _open(code)
    return storefront.lookup_page(_page(shop, pricing))


@public.post("/s/<code>/dispute")
def dispute(code: str):
    shop, pricing = _open(code)
    return storefront.dispute_page(_page(shop, pricing))


@public.get("/s/<code>/logo.png")
def logo(code: str):
    """The shop's logo as we re-encoded it (public; the URL carries its version, so it may be cached)."""
    try:
        shop = service.by_code(code)
    except KamengError:
        abort(404)
    if not shop.logo_png:
        abort(404)
    return Response(shop.logo_png, mimetype="image/png", headers={"Cache-Control": "public, max-age=86400"})


@public.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    if "/api/" in request.path:
        return storefront._error(KamengError(exc.description or exc.name, code="http_error", status=exc.code or 400))
    return exc


public.before_request(storefront.refuse_nul)


def register(app: Flask) -> None:
    """CSRF off for the JSON checkout (no cookies involved, as the storefront's); checkouts, lookups and disputes
    rate-limited per address like the storefront's."""
    limiter = app.appbuilder.sm.limiter
    csrf.exempt(api_create_order)
    lookup_limit = app.config["SHOP_LOOKUP_RATE_LIMIT"]
    limited = [limiter.limit(lookup_limit, methods=["POST"])(lookup),
               limiter.limit(lookup_limit, methods=["POST"])(dispute),
               limiter.limit(app.config["SHOP_ORDER_RATE_LIMIT"], methods=["POST"])(api_create_order),
               limiter.limit(app.config["SHOP_ORDER_RATE_LIMIT"], methods=["POST"])(buy)]
    app.register_blueprint(public)
    # Flask-Limiter enforces a decorated limit only inside the wrapper it returns: route the wrappers.
    for view in limited:
        app.view_functions[f"agentshop.{view.__name__}"] = view

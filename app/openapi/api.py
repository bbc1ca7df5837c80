"""The Open API blueprint (/open/v1): parse, authenticate, call a service, render JSON. No rules here."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, g, jsonify, render_template, request, stream_with_context
from werkzeug.exceptions import HTTPException

from app.catalog import extraction
from app.errors import Forbidden, KamengError, ValidationError
from app.extensions import csrf, db
from app.ledger.service import agent_balances
from app.openapi import service
from app.openapi.spec import build_spec

bp = Blueprint("openapi", __name__, url_prefix="/open/v1")
PUBLIC_ENDPOINTS = {"openapi.spec", "openapi.docs"}
PARTNER_ENDPOINTS = {"openapi.risk_feed"}  # partner keys (scope risk_feed) only; agent keys get 403


def error(code: str, message: str, status: int):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


@bp.before_request
def authenticate():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    body = request.get_data(cache=True)
    g.api_key = service.authenticate(request.method, request.path, request.headers, body, request.remote_addr,
                                     raw_path=_raw_path())
    if request.endpoint in PARTNER_ENDPOINTS:
        if g.api_key.scope != "risk_feed" or g.api_key.partner_id is None:
            raise Forbidden("this key has no partner feed permission (risk_feed)", code="forbidden_scope")
        return None
    g.api_agent = service.caller_agent(g.api_key)
    return None


@bp.errorhandler(KamengError)
def domain_error(exc: KamengError):
    return error(exc.code, exc.message, exc.status if 400 <= exc.status < 500 else 400)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}
    response = error(codes.get(exc.code, "http_error"), exc.description or exc.name, exc.code or 400)
    if exc.code == 429 and getattr(exc, "retry_after", None):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _raw_path() -> str | None:
    """The path as the client sent it on the request line (percent-encoded), when the server passes it on."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw:
        return None
    try:
        return urlsplit(raw).path or None
    except ValueError:
        return None


def _json_body():
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw.decode("utf-8") or "null")
    # ValueError also covers integer literals past Python's digit limit; RecursionError, absurd nesting.
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError("request body must be valid UTF-8 JSON") from None


@bp.get("/openapi.json")
def spec():
    return jsonify(build_spec())


@bp.get("/docs")
def docs():
    return render_template("kameng/openapi_docs.html", spec=build_spec())


@bp.get("/products")
def products():
    return jsonify({"products": service.products_for(g.api_agent)})


@bp.get("/balance")
def balance():
    balances = agent_balances(g.api_agent.id)
    return jsonify({"balance": balances["wallet"], "pending": balances["pending"], "frozen": balances["frozen"]})


@bp.post("/orders")
def create_order():
    shown, created = service.create_order(g.api_key, _json_body(), ip=request.remote_addr)
    response = jsonify(shown)
    response.status_code = 201 if created else 200
    return response


@bp.get("/orders/<order_no>")
def get_order(order_no: str):
    return _shown(service.order_json(service.find_order(g.api_agent.id, order_no=order_no)))


@bp.get("/orders")
def find_order():
    out_trade_no = request.args.get("out_trade_no", "")
    return _shown(service.order_json(service.find_order(g.api_agent.id, out_trade_no=out_trade_no or None)))


def _shown(data: dict):
    """An order answer carrying secrets: a reusable secret's reveal (app.catalog.cards.reveal) is committed before
    the answer leaves."""
    db.session.commit()
    return jsonify(data)


@bp.get("/orders/<order_no>/secrets")
def order_secrets(order_no: str):
    """批量提卡: one of the caller's own delivered orders' secrets as a file, ?format=txt (default) or csv. A format
    other than these is 400 invalid_format; another agent's order is 404 exactly as a missing one. Each download is
    audited and counted (app.catalog.extraction)."""
    fmt = extraction.parse_format(request.args.get("format", "txt"), extraction.API_FORMATS)
    result = extraction.extract_order(g.api_agent.id, order_no, fmt, via="openapi", api_key=g.api_key.app_key)
    return Response(stream_with_context(result.chunks), mimetype=result.mimetype, headers={
        "Content-Disposition": f'attachment; filename="{result.filename}"', "Cache-Control": "no-store"})


@bp.get("/risk/feed")
def risk_feed():
    """The signed risk feed for a partner platform (app.risk.feed), ?since= for what changed after a time. The body
    is the signed document's exact bytes; each pull is audited."""
    from app.risk import feed

    body = feed.serve(g.api_key.partner_id, g.api_key.app_key, request.args.get("since"))
    return Response(body, mimetype="application/json", headers={"Cache-Control": "no-store"})


def register(app: Flask) -> None:
    """Mount the API: CSRF off (requests are signed), a rate limit per app key on FAB's Flask-Limiter."""
    csrf.exempt(bp)
    limiter = app.appbuilder.sm.limiter
    # One budget per key across every endpoint (a plain `limit` on a blueprint counts each route separately).
    limiter.shared_limit(app.config["OPENAPI_RATE_LIMIT"], scope="openapi", key_func=_rate_key,
                         exempt_when=lambda: request.endpoint in PUBLIC_ENDPOINTS)(bp)
    app.register_blueprint(bp)
    app.register_error_handler(404, _json_not_found)
    app.register_error_handler(405, _json_not_found)


def _json_not_found(exc: HTTPException):
    """Unrouted paths under /open/ answer in the API's error format; elsewhere Flask's page."""
    if request.path.startswith("/open/"):
        return http_error(exc)
    return exc


def _rate_key() -> str:
    """Per app key and caller address: the limit runs before authentication, so a stranger who learns an app
    key (it travels in clear headers) exhausts only their own address's budget, not the reseller's."""
    return f"openapi:{request.headers.get('X-App-Key', '')[:40]}:{request.remote_addr or '-'}"

"""Every answer refuses to be framed by another site and to be sniffed into another type, carries a
Content-Security-Policy (scripts from our origin, inline ones only with the request's nonce or Dash's hashes), and
every answer that can carry card secrets or personal data is `no-store`. (tests/test_browser_csp.py shows the
pages still work under that policy in Chromium.)"""
from __future__ import annotations

import re

import pytest

from tests import payments_helpers as h
from tests.openapi_helpers import new_key, signed_call


def _csp(response) -> dict[str, str]:
    return {part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else ""
            for part in (p.strip() for p in response.headers["Content-Security-Policy"].split(";")) if part}


def _assert_no_store(response):
    assert response.headers.get("Cache-Control") == "no-store", (response.status_code, dict(response.headers))
    assert response.headers.get("Pragma") == "no-cache"


@pytest.mark.parametrize("path", ["/", "/login/", "/shop/", "/shop/lookup", "/shop/api/products",
                                  "/open/v1/openapi.json", "/no-such-page"])
def test_pages_cannot_be_framed(app, client, path):
    r = client.get(path)
    assert r.headers["X-Frame-Options"] == "DENY"
    csp = _csp(r)
    assert csp["frame-ancestors"] == "'none'"
    assert csp["default-src"] == "'self'" and csp["object-src"] == "'none'" and csp["base-uri"] == "'self'"
    assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"


def test_inline_scripts_carry_the_requests_nonce(app, client, f):
    """FAB's templates write csp_nonce() on their inline scripts; each answer has its own nonce."""
    admin = f.user(f.unique("admin"), role="Admin")
    f.login(client, admin.username)
    first, second = client.get("/orders/list/"), client.get("/orders/list/")
    nonces = [re.search(r"'nonce-([^']+)'", _csp(r)["script-src"]).group(1) for r in (first, second)]
    assert nonces[0] != nonces[1] and len(nonces[0]) >= 22
    page = first.get_data(as_text=True)
    inline = [tag for tag in re.findall(r"<script\b[^>]*>", page) if "src=" not in tag]
    assert inline and all(f'nonce="{nonces[0]}"' in tag for tag in inline), inline


def test_dash_pages_cannot_be_framed_either(app, client, f):
    admin = f.user(f.unique("admin"), role="Admin")
    f.login(client, admin.username)
    r = client.get("/analytics/risk/")
    assert r.status_code == 200 and r.headers["X-Frame-Options"] == "DENY"
    assert _csp(r)["frame-src"] == "'self'"
    _assert_no_store(r)
    # The Dash app itself is framed by that page (same origin only) and its renderer runs by its hash.
    inner = client.get("/dashboards/risk/")
    assert inner.status_code == 200 and inner.headers["X-Frame-Options"] == "SAMEORIGIN"
    csp = _csp(inner)
    assert csp["frame-ancestors"] == "'self'" and "'sha256-" in csp["script-src"]
    _assert_no_store(inner)
    # Dash's own script files stay cacheable.
    suite = re.search(r'src="(/dashboards/risk/_dash-component-suites/[^"]+)"', inner.get_data(as_text=True))
    asset = client.get(suite.group(1))
    assert asset.status_code == 200 and "no-store" not in asset.headers.get("Cache-Control", "")


def test_the_lookup_with_secrets_is_not_cached(app, client, f):
    h.setup_sandbox()
    order = h.guest_order(f.product(secrets=1), "sandbox")
    h.notify(client, "sandbox", order, "SBX-HDR-1")
    r = client.post("/shop/api/lookup", json={"order_no": order.order_no, "query_password": h.PASSWORD})
    assert r.status_code == 200 and r.get_json()["card_secrets"]
    _assert_no_store(r)
    page = client.post("/shop/lookup", data={"order_no": order.order_no, "query_password": h.PASSWORD})
    assert page.status_code == 200 and r.get_json()["card_secrets"][0] in page.get_data(as_text=True)
    _assert_no_store(page)
    from app.payments import service as payments

    link = client.get(payments.lookup_path(order.order_no))
    assert link.status_code == 200
    _assert_no_store(link)
    # The public catalogue carries nothing personal: it may be cached.
    assert "no-store" not in client.get("/shop/").headers.get("Cache-Control", "")


def test_open_api_order_answers_are_not_cached(app, client, f):
    agent = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=9000))
    product = f.product(face_price=10_000, cost=8_000, secrets=2)
    key, secret = new_key(agent)
    created = signed_call(client, key, secret, "POST", "/open/v1/orders",
                          {"out_trade_no": "HDR-1", "product_id": product.id, "quantity": 1})
    assert created.status_code == 201, created.get_data(as_text=True)
    _assert_no_store(created)
    shown = signed_call(client, key, secret, "GET", f"/open/v1/orders/{created.get_json()['order_no']}")
    assert shown.status_code == 200
    _assert_no_store(shown)


def test_signed_in_pages_are_not_cached_but_static_files_are(app, client, f):
    agent = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=9000))
    product = f.product(face_price=10_000, cost=8_000, secrets=2)
    from app.orders import service as orders

    order = orders.place_wallet_order(agent.id, product.id, 1)
    f.login(client, agent.name)
    page = client.get(f"/portal/orders/{order.order_no}")
    assert page.status_code == 200
    _assert_no_store(page)
    _assert_no_store(client.get("/portal/my-orders/list/"))
    staff = app.test_client()
    admin = f.user(f.unique("admin"), role="Admin")
    f.login(staff, admin.username)
    listing = staff.get("/orders/list/")
    assert listing.status_code == 200
    _assert_no_store(listing)
    css = staff.get("/static/appbuilder/css/ab.css")
    assert css.status_code == 200 and "no-store" not in css.headers.get("Cache-Control", "")


def test_a_views_own_security_headers_are_kept_and_the_rest_added(app):
    from flask import Response

    from app.headers import secure_headers

    with app.test_request_context("/orders/list/"):
        own = Response("x", headers={"x-frame-options": "SAMEORIGIN", "Content-Security-Policy": "default-src 'none'"})
        r = secure_headers(own)
    assert r.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert r.headers.getlist("Content-Security-Policy") == ["default-src 'none'"]
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"] == "same-origin"

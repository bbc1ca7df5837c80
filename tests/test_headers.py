"""Every answer refuses to be framed by another site and to be sniffed into another type; the lookup that shows
card secrets is never cached."""
from __future__ import annotations

import pytest

from tests import payments_helpers as h


@pytest.mark.parametrize("path", ["/", "/login/", "/shop/", "/shop/lookup", "/shop/api/products",
                                  "/open/v1/openapi.json", "/no-such-page"])
def test_pages_cannot_be_framed(app, client, path):
    r = client.get(path)
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"


def test_dash_pages_cannot_be_framed_either(app, client, f):
    admin = f.user(f.unique("admin"), role="Admin")
    f.login(client, admin.username)
    r = client.get("/analytics/risk/")
    assert r.status_code == 200 and r.headers["X-Frame-Options"] == "DENY"


def test_the_lookup_with_secrets_is_not_cached(app, client, f):
    h.setup_sandbox()
    order = h.guest_order(f.product(secrets=1), "sandbox")
    h.notify(client, "sandbox", order, "SBX-HDR-1")
    r = client.post("/shop/api/lookup", json={"order_no": order.order_no, "query_password": h.PASSWORD})
    assert r.status_code == 200 and r.get_json()["card_secrets"] and r.headers["Cache-Control"] == "no-store"

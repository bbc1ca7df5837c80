"""Machine endpoints (app/machines.py): the signed and server-to-server ones run without a session (no cookie read,
none written), the storefront's JSON API keeps its session (the buyer's language) but never runs the staff sign-in
checks; security headers, request ids and error shapes are those of every other answer."""
from __future__ import annotations

from flask import g

from app.settings import service as settings
from app.twofactor.sessions import SESSION_KEY
from tests.openapi_helpers import new_key, signed_call


def _machine_answer(response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert "Set-Cookie" not in response.headers, response.headers.getlist("Set-Cookie")
    assert "Cookie" not in response.headers.get("Vary", "")  # the session was not even read
    assert response.headers["X-Frame-Options"] == "DENY" and "Content-Security-Policy" in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff" and response.headers.get("X-Request-ID")


def test_sessionless_paths_neither_read_nor_set_a_session_cookie(app, f):
    agent = f.agent(balance=10_000)
    key, secret = new_key(agent)
    admin = f.user(f.unique("admin"), role="Admin")
    client = app.test_client()
    f.login(client, admin.username)  # the client now sends an admin's session cookie with every request

    r = signed_call(client, key, secret, "GET", "/open/v1/balance")
    _machine_answer(r, 200)
    assert r.get_json()["balance"] == 10_000 and r.headers["Cache-Control"] == "no-store"
    _machine_answer(client.get("/open/v1/balance"), 401)  # the admin's cookie signs nothing
    assert client.get("/open/v1/balance").get_json()["error"]["code"] == "unauthorized"
    _machine_answer(client.get("/open/v1/no-such-thing"), 404)
    _machine_answer(client.get("/open/v1/openapi.json"), 200)
    # Notifications: FAB's language selector would write the default language into a new session here.
    fresh = app.test_client()
    for response in (fresh.post("/pay/notify/sandbox", data={"x": "1"}), fresh.post("/supplier/notify/999999",
                                                                                  data=b"{}")):
        assert "Set-Cookie" not in response.headers and response.status_code < 500, response.status_code
        assert "Cookie" not in response.headers.get("Vary", "")
    assert client.get("/orders/list/").status_code == 200  # the admin's own session is untouched

    with client.session_transaction() as s:
        del s[SESSION_KEY]  # a stale staff session: signed out by the first request that reads it
    _machine_answer(signed_call(client, key, secret, "GET", "/open/v1/balance"), 200)
    r = client.get("/orders/list/")
    assert r.status_code == 302 and "/login/" in r.headers["Location"]


def test_the_storefront_api_skips_the_staff_sign_in_checks_but_not_the_pages(app, f):
    """A staff user who must enrol, or whose session went stale, is refused the admin pages as before; the
    storefront's JSON API, which acts as nobody, answers them like any buyer."""
    settings.set_value("staff_2fa_required", True, None)
    support = f.user(f.unique("support"), role="Support")
    client = app.test_client()
    f.login(client, support.username)
    r = client.get("/shop/api/products")
    assert r.status_code == 200 and r.is_json
    r = client.get("/orders/list/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/two-factor/")

    settings.set_value("staff_2fa_required", False, None)
    with client.session_transaction() as s:
        del s[SESSION_KEY]  # stale, as after a password change elsewhere
    assert client.get("/shop/api/products").status_code == 200
    r = client.get("/orders/list/")
    assert r.status_code == 302 and "/login/" in r.headers["Location"]  # signed out at the first page


def test_a_storefront_api_call_without_a_language_starts_no_session_and_a_chosen_one_is_kept(app, f):
    """A mini-program (no cookies) gets Chinese and no session cookie per call; a buyer who chose English on the
    storefront keeps it on the JSON API."""
    f.product()
    cookieless = app.test_client(use_cookies=False)
    r = cookieless.post("/shop/api/lookup", json={"order_no": "nope", "query_password": "wrong-password"})
    assert r.status_code == 404 and "Set-Cookie" not in r.headers, r.headers.getlist("Set-Cookie")
    assert r.get_json()["error"]["message"] == "订单不存在或密码错误"
    assert "Set-Cookie" not in cookieless.get("/shop/api/products").headers
    g.pop("_flask_babel", None)  # the test's one app context keeps the language chosen above (production: per request)
    r = cookieless.post("/shop/api/lookup?_l_=en", json={"order_no": "nope", "query_password": "wrong-password"})
    assert r.status_code == 404 and "订单" not in r.get_json()["error"]["message"], r.get_json()  # FAB's ?_l_=

    browser = app.test_client()
    browser.get("/lang/en")
    r = browser.post("/shop/api/lookup", json={"order_no": "nope", "query_password": "wrong-password"})
    assert r.status_code == 404 and "订单" not in r.get_json()["error"]["message"], r.get_json()

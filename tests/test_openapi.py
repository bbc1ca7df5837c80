"""Open API (/open/v1): signing, the endpoints, idempotency, errors, races over real HTTP, keys in portal/CLI/admin.

Through the Flask test client and through app/openapi/client.py over real HTTP (the fixture's app served by
werkzeug in a thread, on the same PostgreSQL database). Every test ends with the ledger check (`app` fixture).
"""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

from app.catalog.models import CardSecret
from app.extensions import db
from app.ledger import service as ledger
from app.openapi import signing
from app.openapi.models import ApiKey
from app.orders.models import Order
from tests.conftest import make_app
from tests.openapi_helpers import (
    api_client,
    assert_error,
    new_key,
    order_count,
    served,
    signed_call,
)

ORDERS = "/open/v1/orders"


@pytest.fixture
def world(f):
    """One agent (tier price 90% of face) with ¥1000.00, a card product with 5 secrets (¥100.00 face) and a key."""
    tier = f.tier(discount_bp=9000)
    agent = f.agent(balance=100_000, tier_obj=tier)
    product = f.product(face_price=10_000, cost=8_000, secrets=5)
    key, secret = new_key(agent)

    class World:
        pass

    w = World()
    w.tier, w.agent, w.product, w.key, w.secret = tier, agent, product, key, secret
    return w


def order_body(w, out_trade_no: str | None = None, **extra) -> dict:
    body = {"out_trade_no": out_trade_no or uuid.uuid4().hex, "product_id": w.product.id, "quantity": 1}
    body.update(extra)
    return body


def assert_nothing_moved(f, w, wallet: int = 100_000) -> None:
    assert order_count() == 0
    assert f.wallet(w.agent) == wallet
    assert db.session.scalar(select(func.count()).select_from(CardSecret).where(CardSecret.status == "sold")) == 0


# --- products and balance ------------------------------------------------------------------------------------

def test_products_show_the_callers_tier_price_and_stock(app, f, client, world):
    empty = f.product(face_price=5_000, cost=4_000)  # card product with no stock
    direct = f.product(kind="direct", face_price=3_000, cost=2_900)
    f.product(face_price=1_000)  # inactive products are not offered
    hidden = f.product(face_price=1_000)
    hidden.active = False
    db.session.commit()
    r = signed_call(client, world.key, world.secret, "GET", "/open/v1/products")
    assert r.status_code == 200, r.text
    products = {p["id"]: p for p in r.get_json()["products"]}
    assert hidden.id not in products
    assert products[world.product.id] == {
        "id": world.product.id, "name": world.product.name, "category": world.product.category.name,
        "kind": "card", "face_price": 10_000, "price": 9_000, "in_stock": True, "max_per_order": 10}
    assert (products[empty.id]["price"], products[empty.id]["in_stock"]) == (4_500, False)
    # a direct top-up no supplier can take is not in stock (tests/test_recharge.py lists one that is)
    assert (products[direct.id]["kind"], products[direct.id]["price"], products[direct.id]["in_stock"]) == \
        ("direct", 2_700, False)

    # Another agent on another tier sees its own price for the same product.
    other = f.agent(tier_obj=f.tier(discount_bp=9500))
    other_key, other_secret = new_key(other)
    with served(app) as base:
        r = api_client(base, other_key, other_secret).products()
        assert r.status_code == 200, r.text
        assert {p["id"]: p["price"] for p in r.json()["products"]}[world.product.id] == 9_500


def test_balance_in_fen(app, f, client, world):
    wallet = ledger.agent_account_code(world.agent.id, "wallet")
    pending = ledger.agent_account_code(world.agent.id, "pending")
    frozen = ledger.agent_account_code(world.agent.id, "frozen")
    ledger.post_journal(f"test:pending:{world.agent.id}", "adjustment",
                        [ledger.Line(pending, 1_234), ledger.Line("platform:adjustments", -1_234)])
    ledger.post_journal(f"test:freeze:{world.agent.id}", "adjustment",
                        [ledger.Line(wallet, -500), ledger.Line(frozen, 500)])
    db.session.commit()
    r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance")
    assert r.status_code == 200, r.text
    assert r.get_json() == {"balance": 99_500, "pending": 1_234, "frozen": 500}
    with served(app) as base:
        r = api_client(base, world.key, world.secret).balance()
        assert r.status_code == 200 and r.json() == {"balance": 99_500, "pending": 1_234, "frozen": 500}


# --- signing failures ----------------------------------------------------------------------------------------

def _headers(key, secret, method="POST", path=ORDERS, body=b"", timestamp=None, nonce=None):
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    return {"X-App-Key": key.app_key, "X-Timestamp": timestamp, "X-Nonce": nonce,
            "X-Signature": signing.sign(secret, method, path, timestamp, nonce, body),
            "Content-Type": "application/json"}


def _post(client, headers, body: bytes, remote_addr: str | None = None):
    kwargs = {"environ_base": {"REMOTE_ADDR": remote_addr}} if remote_addr else {}
    return client.post(ORDERS, data=body, headers=headers, **kwargs)


@pytest.mark.parametrize("missing", ["X-App-Key", "X-Timestamp", "X-Nonce", "X-Signature", "all"])
def test_missing_signing_headers_are_401(app, f, client, world, missing):
    body = json.dumps(order_body(world)).encode()
    headers = _headers(world.key, world.secret, body=body)
    if missing == "all":
        headers = {"Content-Type": "application/json"}
    else:
        del headers[missing]
    assert_error(_post(client, headers, body), 401, "unauthorized")
    assert_nothing_moved(f, world)


def test_bad_signatures_are_401(app, f, client, world):
    body = json.dumps(order_body(world)).encode()
    cases = {}
    h = _headers(world.key, world.secret, body=body)
    h["X-Signature"] = "0" * 64
    cases["zeros"] = h
    h = _headers(world.key, world.secret, body=body)
    h["X-Signature"] = h["X-Signature"][:-1]
    cases["truncated"] = h
    cases["other secret"] = _headers(world.key, secrets.token_hex(32), body=body)
    other_body = json.dumps(order_body(world, quantity=2)).encode()
    cases["another body"] = _headers(world.key, world.secret, body=other_body)
    cases["another path"] = _headers(world.key, world.secret, path="/open/v1/balance", body=body)
    cases["another method"] = _headers(world.key, world.secret, method="PUT", body=body)
    cases["query in path"] = _headers(world.key, world.secret, path=ORDERS + "?x=1", body=body)
    h = _headers(world.key, world.secret, body=body)
    h["X-Signature"] = "é" * 64
    cases["non-ascii"] = h
    for name, headers in cases.items():
        r = _post(client, headers, body)
        assert r.status_code == 401, (name, r.text)
        assert_error(r, 401, "unauthorized")
    assert_nothing_moved(f, world)
    # Uppercase hex of the right signature is accepted (the comparison lower-cases), as a control.
    h = _headers(world.key, world.secret, body=body)
    h["X-Signature"] = h["X-Signature"].upper()
    assert _post(client, h, body).status_code == 201


def test_timestamps_outside_the_window_or_malformed_are_401(app, f, client, world):
    body = json.dumps(order_body(world)).encode()
    now = int(time.time())
    for timestamp in [str(now - 301), str(now + 301), "abc", "", "-5", "1.5", " " + str(now), str(now) + " ",
                      "²", "١٢٣٤٥", "9" * 5000, "0x10", "1e9"]:
        if timestamp in (str(now - 301), str(now + 301)):  # just outside, from the clock at this request
            timestamp = str(int(time.time()) + (305 if int(timestamp) > now else -305))
        headers = _headers(world.key, world.secret, body=body, timestamp=timestamp)
        r = _post(client, headers, body)
        assert r.status_code == 401, (timestamp[:20], r.status_code, r.text[:200])
        assert_error(r, 401, "unauthorized")
    assert_nothing_moved(f, world)
    # Inside the window on both sides is fine.
    r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", now=now - 290)
    assert r.status_code == 200
    r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", now=now + 290)
    assert r.status_code == 200


def test_nonce_length_and_characters(app, f, client, world):
    body = json.dumps(order_body(world)).encode()
    for nonce in ["a" * 15, "a" * 65, "", "a" * 15 + " ", "é" * 16, "a" * 8 + " " + "a" * 8]:
        r = _post(client, _headers(world.key, world.secret, body=body, nonce=nonce), body)
        assert r.status_code == 401, (nonce, r.text)
        assert_error(r, 401, "unauthorized")
    assert_nothing_moved(f, world)
    for nonce in ["n" * 16, "N" * 64]:
        r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", nonce=nonce)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("store", ["database", "redis"])
def test_replayed_nonce_is_401(app, f, client, world, request, store):
    if store == "redis":
        app.config["REDIS_URL"] = request.getfixturevalue("redis_url")
    try:
        nonce = secrets.token_hex(16)
        r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", nonce=nonce)
        assert r.status_code == 200, r.text
        r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", nonce=nonce)
        assert_error(r, 401, "unauthorized")
        assert "nonce" in r.get_json()["error"]["message"]

        # A byte-for-byte replay of a purchase is refused before it reaches the order code.
        body = json.dumps(order_body(world)).encode()
        headers = _headers(world.key, world.secret, body=body)
        assert _post(client, headers, body).status_code == 201
        assert_error(_post(client, headers, body), 401, "unauthorized")
        assert order_count() == 1 and f.wallet(world.agent) == 91_000

        # The same nonce on another key is that key's own business.
        other_key, other_secret = new_key(f.agent())
        r = signed_call(client, other_key, other_secret, "GET", "/open/v1/balance", nonce=nonce)
        assert r.status_code == 200
        # An unsigned request with a victim's nonce does not burn it.
        fresh = secrets.token_hex(16)
        bad = _headers(world.key, "wrong-secret", method="GET", path="/open/v1/balance", nonce=fresh)
        assert client.get("/open/v1/balance", headers=bad).status_code == 401
        r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", nonce=fresh)
        assert r.status_code == 200
    finally:
        app.config["REDIS_URL"] = None


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_replay_is_401_while_redis_is_unreachable(app, f, client, world, request):
    """Nonces are rows with a unique constraint, whatever Redis does: a request signed while Redis was up and
    replayed while it is down (REDIS_URL pointing at a closed port) is refused, and so is a replay of a request
    first seen during the outage."""
    app.config["REDIS_URL"] = request.getfixturevalue("redis_url")
    try:
        body = json.dumps(order_body(world)).encode()
        headers = _headers(world.key, world.secret, body=body)
        assert _post(client, headers, body).status_code == 201
        balance_nonce = secrets.token_hex(16)
        assert signed_call(client, world.key, world.secret, "GET", "/open/v1/balance",
                           nonce=balance_nonce).status_code == 200

        app.config["REDIS_URL"] = f"redis://127.0.0.1:{_closed_port()}/0"
        assert_error(_post(client, headers, body), 401, "unauthorized")
        r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", nonce=balance_nonce)
        assert_error(r, 401, "unauthorized")
        assert "nonce" in r.get_json()["error"]["message"]

        during = secrets.token_hex(16)
        assert signed_call(client, world.key, world.secret, "GET", "/open/v1/balance",
                           nonce=during).status_code == 200
        assert_error(signed_call(client, world.key, world.secret, "GET", "/open/v1/balance", nonce=during),
                     401, "unauthorized")
        assert order_count() == 1 and f.wallet(world.agent) == 91_000
    finally:
        app.config["REDIS_URL"] = None


def test_unknown_key_is_401(app, f, client, world):
    body = json.dumps(order_body(world)).encode()

    class Fake:
        app_key = "ak" + secrets.token_hex(15)

    assert_error(_post(client, _headers(Fake, world.secret, body=body), body), 401, "unauthorized")
    long_key = _headers(world.key, world.secret, body=body)
    long_key["X-App-Key"] = world.key.app_key + "x" * 100  # truncated lookups must not match a real key
    assert_error(_post(client, long_key, body), 401, "unauthorized")
    assert_nothing_moved(f, world)


def test_key_revoked_in_the_portal_is_401(app, f, client, world):
    assert signed_call(client, world.key, world.secret, "GET", "/open/v1/balance").status_code == 200
    portal = app.test_client()
    f.login(portal, world.agent.name)
    r = portal.post(f"/portal/api-keys/revoke/{world.key.id}")
    assert r.status_code == 302
    db.session.expire_all()
    key = db.session.get(ApiKey, world.key.id)
    assert key.active is False and key.revoked_at is not None
    body = json.dumps(order_body(world)).encode()
    assert_error(_post(client, _headers(world.key, world.secret, body=body), body), 401, "unauthorized")
    assert_nothing_moved(f, world)


def test_key_revoked_with_the_cli_is_401(app, f, client, world):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "api-key", "revoke", world.key.app_key])
    assert result.exit_code == 0, result.output
    assert world.key.app_key in result.stdout
    body = json.dumps(order_body(world)).encode()
    assert_error(_post(client, _headers(world.key, world.secret, body=body), body), 401, "unauthorized")
    assert_nothing_moved(f, world)
    result = runner.invoke(args=["kameng", "api-key", "revoke", "ak-no-such-key"])
    assert result.exit_code != 0 and "no API key" in result.stderr


def test_ip_allow_list(app, f, client, world):
    key, secret = new_key(world.agent, allow="10.1.2.0/24, 192.168.7.7")
    ok = signed_call(client, key, secret, "GET", "/open/v1/balance", remote_addr="10.1.2.3")
    assert ok.status_code == 200, ok.text
    assert signed_call(client, key, secret, "GET", "/open/v1/balance", remote_addr="192.168.7.7").status_code == 200
    body = order_body(world)
    for address in ("10.1.3.1", "192.168.7.8", "127.0.0.1"):
        r = signed_call(client, key, secret, "POST", ORDERS, body, remote_addr=address)
        assert_error(r, 401, "unauthorized")
    # X-Forwarded-For is not trusted by default: a spoofed allowed address from a disallowed peer is refused.
    for xff in ("10.1.2.3", "10.1.2.3, 10.1.2.4", "9.9.9.9, 10.1.2.3"):
        r = signed_call(client, key, secret, "POST", ORDERS, body, remote_addr="10.9.9.9",
                        headers={"X-Forwarded-For": xff, "X-Real-IP": "10.1.2.3"})
        assert_error(r, 401, "unauthorized")
    assert_nothing_moved(f, world)


@pytest.fixture(scope="session")
def proxied_app(pg_url):
    """The app behind one trusted proxy: X-Forwarded-For's last hop is the client."""
    return make_app(pg_url, TRUSTED_PROXIES=1)


def test_forwarded_for_is_honoured_behind_a_trusted_proxy(app, f, world, proxied_app):
    key, secret = new_key(world.agent, allow="10.1.2.0/24")
    client = proxied_app.test_client()
    r = signed_call(client, key, secret, "GET", "/open/v1/balance", remote_addr="127.0.0.1",
                    headers={"X-Forwarded-For": "10.1.2.3"})
    assert r.status_code == 200, r.text
    # With one trusted proxy, only the last hop counts: a client-supplied first entry does not.
    r = signed_call(client, key, secret, "POST", ORDERS, order_body(world), remote_addr="127.0.0.1",
                    headers={"X-Forwarded-For": "10.1.2.3, 10.9.9.9"})
    assert_error(r, 401, "unauthorized")
    r = signed_call(client, key, secret, "POST", ORDERS, order_body(world), remote_addr="127.0.0.1")
    assert_error(r, 401, "unauthorized")
    assert_nothing_moved(f, world)


# --- idempotency ---------------------------------------------------------------------------------------------

def test_same_body_returns_the_same_order_and_a_different_body_is_409(app, f, client, world):
    body = order_body(world, "shop-0001")
    first = signed_call(client, world.key, world.secret, "POST", ORDERS, body)
    assert first.status_code == 201, first.text
    data = first.get_json()
    assert data["status"] == "delivered" and data["amount"] == 9_000 and len(data["card_secrets"]) == 1
    assert data["out_trade_no"] == "shop-0001" and data["currency"] == "CNY"
    # Same content, other key order and spacing: the same request.
    raw = b'{ "quantity": 1, "product_id": %d, "out_trade_no": "shop-0001" }' % world.product.id
    again = signed_call(client, world.key, world.secret, "POST", ORDERS, raw=raw)
    assert again.status_code == 200, again.text
    assert again.get_json() == data
    assert order_count() == 1 and f.wallet(world.agent) == 91_000

    for changed in ({"quantity": 2}, {"notify_url": "http://example.com/cb"}, {"account": "x"}):
        r = signed_call(client, world.key, world.secret, "POST", ORDERS, {**body, **changed})
        assert_error(r, 409, "out_trade_no_conflict")
    assert order_count() == 1 and f.wallet(world.agent) == 91_000

    # Another agent may use the same out_trade_no for its own order.
    other = f.agent(balance=10_000, tier_obj=world.tier)
    other_key, other_secret = new_key(other)
    r = signed_call(client, other_key, other_secret, "POST", ORDERS, body)
    assert r.status_code == 201 and r.get_json()["order_no"] != data["order_no"]
    # A refused request (no stock) does not consume the out_trade_no.
    empty = f.product(face_price=100)
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, {**order_body(world, "shop-0002"),
                                                                       "product_id": empty.id})
    assert_error(r, 409, "out_of_stock")
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world, "shop-0002"))
    assert r.status_code == 201


def test_concurrent_identical_requests_make_one_order(app, f, world):
    n = 10
    barrier = threading.Barrier(n)
    results: list = [None] * n
    body = order_body(world, "race-idem-1")

    with served(app) as base:
        clients = [api_client(base, world.key, world.secret) for _ in range(n)]  # ORM reads stay in this thread

        def buy(i):
            client = clients[i]
            barrier.wait()
            try:
                results[i] = client.request("POST", ORDERS, body)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc

        threads = [threading.Thread(target=buy, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * (n - 1) + [201], [getattr(r, "text", r) for r in results]
    assert len({r.json()["order_no"] for r in results}) == 1
    assert len({tuple(r.json()["card_secrets"]) for r in results}) == 1
    assert order_count() == 1
    assert f.wallet(world.agent) == 91_000
    assert db.session.scalar(select(func.count()).select_from(CardSecret).where(CardSecret.status == "sold")) == 1


# --- reading orders ------------------------------------------------------------------------------------------

def test_get_orders_only_the_callers_own(app, f, client, world):
    created = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world, "mine-1")).get_json()
    r = signed_call(client, world.key, world.secret, "GET", f"{ORDERS}/{created['order_no']}")
    assert r.status_code == 200 and r.get_json() == created
    r = signed_call(client, world.key, world.secret, "GET", ORDERS, query="out_trade_no=mine-1")
    assert r.status_code == 200 and r.get_json() == created

    other = f.agent(balance=100_000, tier_obj=world.tier)
    other_key, other_secret = new_key(other)
    theirs = signed_call(client, other_key, other_secret, "POST", ORDERS, order_body(world, "theirs-1")).get_json()
    missing = signed_call(client, world.key, world.secret, "GET", f"{ORDERS}/250101000000000000")
    foreign = signed_call(client, world.key, world.secret, "GET", f"{ORDERS}/{theirs['order_no']}")
    assert_error(missing, 404, "not_found")
    assert foreign.status_code == 404 and foreign.get_json() == missing.get_json()
    missing = signed_call(client, world.key, world.secret, "GET", ORDERS, query="out_trade_no=nobody")
    foreign = signed_call(client, world.key, world.secret, "GET", ORDERS, query="out_trade_no=theirs-1")
    assert_error(missing, 404, "not_found")
    assert foreign.status_code == 404 and foreign.get_json() == missing.get_json()

    for query in ("", "out_trade_no=", "other=1"):
        assert_error(signed_call(client, world.key, world.secret, "GET", ORDERS, query=query), 400)
    # Values that cannot name an order are answered as missing, never 5xx (NUL bytes, overlong, odd chars).
    for query in ("out_trade_no=%00", "out_trade_no=a%00b", "out_trade_no=" + "x" * 300, "out_trade_no=%FF"):
        assert_error(signed_call(client, world.key, world.secret, "GET", ORDERS, query=query), 404, "not_found")

    with served(app) as base:
        api = api_client(base, world.key, world.secret)
        r = api.order(created["order_no"])
        assert r.status_code == 200 and r.json() == created
        r = api.order_by_out_trade_no("mine-1")
        assert r.status_code == 200 and r.json() == created
        assert api.order(theirs["order_no"]).status_code == 404
        assert api.order_by_out_trade_no("theirs-1").status_code == 404
        for odd in ("%00", "a%20b", "%E4%BD%A0%E5%A5%BD", "x" * 300, "..%2F..%2Fetc"):
            r = api.order(odd)
            assert r.status_code == 404, (odd, r.status_code, r.text)
            assert_error(r, 404)


# --- error codes and invalid input ---------------------------------------------------------------------------

def test_business_refusals_have_their_codes(app, f, client, world):
    poor = f.agent(balance=8_999, tier_obj=world.tier)
    poor_key, poor_secret = new_key(poor)
    r = signed_call(client, poor_key, poor_secret, "POST", ORDERS, order_body(world))
    assert_error(r, 402, "insufficient_balance")
    assert f.wallet(poor) == 8_999

    empty = f.product(face_price=1_000)
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world, product_id=empty.id))
    assert_error(r, 409, "out_of_stock")
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world, quantity=6))
    assert_error(r, 409, "out_of_stock")

    manual = f.product(kind="manual", face_price=3_000, cost=2_900)
    r = signed_call(client, world.key, world.secret, "POST", ORDERS,
                    order_body(world, product_id=manual.id, account="13800000000"))
    assert_error(r, 422, "unsupported_product_kind")
    # Direct top-ups (tests/test_recharge.py): the account is required; with no supplier able to take it, 409.
    direct = f.product(kind="direct", face_price=3_000, cost=2_900)
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world, product_id=direct.id))
    assert_error(r, 400, "invalid_request")
    assert "account" in r.get_json()["error"]["message"]
    r = signed_call(client, world.key, world.secret, "POST", ORDERS,
                    order_body(world, product_id=direct.id, account="13800000000"))
    assert_error(r, 409, "out_of_stock")

    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world, product_id=999_999))
    assert_error(r, 404, "product_unavailable")
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world, quantity=11))
    assert_error(r, 400, "invalid_quantity")
    limited = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=9000, daily_limit=10_000))
    limited_key, limited_secret = new_key(limited)
    assert signed_call(client, limited_key, limited_secret, "POST", ORDERS, order_body(world)).status_code == 201
    r = signed_call(client, limited_key, limited_secret, "POST", ORDERS, order_body(world))
    assert_error(r, 403, "daily_limit_exceeded")
    assert order_count() == 1 and f.wallet(world.agent) == 100_000 and f.wallet(limited) == 91_000


def _bad_bodies(w) -> dict[str, bytes]:
    good = order_body(w, "bad-body-1")

    def with_(**kw):
        return json.dumps({**good, **kw}).encode()

    def without(name):
        return json.dumps({k: v for k, v in good.items() if k != name}).encode()

    return {
        "not json": b"not json",
        "empty": b"",
        "truncated": json.dumps(good).encode()[:-3],
        "json array": json.dumps([good]).encode(),
        "json string": b'"hello"',
        "json null": b"null",
        "latin-1": '{"out_trade_no": "é"}'.encode("latin-1"),
        "unknown field": with_(price=1),
        "product_id string": with_(product_id=str(w.product.id)),
        "product_id float": with_(product_id=float(w.product.id)),
        "product_id bool": with_(product_id=True),
        "product_id null": with_(product_id=None),
        "product_id huge": with_(product_id=2 ** 80),
        "product_id negative": with_(product_id=-1),
        "no product_id": without("product_id"),
        "quantity 0": with_(quantity=0),
        "quantity -1": with_(quantity=-1),
        "quantity 1.5": with_(quantity=1.5),
        "quantity 1.0": with_(quantity=1.0),
        "quantity true": with_(quantity=True),
        "quantity string": with_(quantity="1"),
        "quantity huge": with_(quantity=10 ** 30),
        "no quantity": without("quantity"),
        "out_trade_no spaces": with_(out_trade_no="a b"),
        "out_trade_no 65": with_(out_trade_no="x" * 65),
        "out_trade_no empty": with_(out_trade_no=""),
        "out_trade_no newline": with_(out_trade_no="abc\n"),
        "out_trade_no number": with_(out_trade_no=123),
        "out_trade_no NUL": with_(out_trade_no="a\x00b"),
        "no out_trade_no": without("out_trade_no"),
        "notify_url ftp": with_(notify_url="ftp://x"),
        "notify_url no host": with_(notify_url="http://"),
        "notify_url relative": with_(notify_url="/callback"),
        "notify_url bad ipv6": with_(notify_url="http://[::1"),
        "notify_url NUL": with_(notify_url="http://example.com/\x00"),
        "notify_url newline": with_(notify_url="http://example.com/a\r\nX: y"),
        "notify_url long": with_(notify_url="http://example.com/" + "a" * 600),
        "notify_url number": with_(notify_url=5),
        "account empty": with_(account=""),
        "account blank": with_(account="   "),
        "account 129": with_(account="1" * 129),
        "account NUL": with_(account="138\x00"),
        "account number": with_(account=13800000000),
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
        "huge integer literal": b'{"out_trade_no": "x", "product_id": 1, "quantity": ' + b"9" * 5000 + b"}",
        "NaN": b'{"out_trade_no": "x", "product_id": 1, "quantity": NaN}',
    }


def test_invalid_bodies_are_4xx_json_and_charge_nothing(app, f, client, world):
    for name, raw in _bad_bodies(world).items():
        r = signed_call(client, world.key, world.secret, "POST", ORDERS, raw=raw)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.get_data(as_text=True)[:300])
        assert_error(r, r.status_code)
    assert_nothing_moved(f, world)


def test_invalid_bodies_over_real_http(app, f, world):
    with served(app) as base:
        api = api_client(base, world.key, world.secret)
        for name, raw in _bad_bodies(world).items():
            headers = signing.signed_headers(world.key.app_key, world.secret, "POST", ORDERS, raw)
            headers["Content-Type"] = "application/json"
            r = api.session.post(base + ORDERS, data=raw, headers=headers, timeout=30)
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            assert r.headers["Content-Type"].startswith("application/json"), name
            assert_error(r, r.status_code)
    assert_nothing_moved(f, world)


def test_unknown_paths_and_methods_answer_json(app, client, world):
    r = signed_call(client, world.key, world.secret, "GET", "/open/v1/nope")
    assert_error(r, 404, "not_found")
    assert_error(client.get("/open/v1/nope"), 404, "not_found")
    assert_error(client.get("/open/v2/orders"), 404, "not_found")
    r = signed_call(client, world.key, world.secret, "DELETE", "/open/v1/balance")
    assert_error(r, 405, "method_not_allowed")
    # Outside /open/ the site keeps its HTML pages.
    assert not client.get("/definitely-not-here").is_json


def test_openapi_document_and_docs_are_public(app, client):
    spec = client.get("/open/v1/openapi.json")
    assert spec.status_code == 200 and spec.get_json()["openapi"].startswith("3.")
    assert set(spec.get_json()["paths"]) == {"/open/v1/products", "/open/v1/balance", "/open/v1/orders",
                                             "/open/v1/orders/{order_no}", "/open/v1/orders/{order_no}/secrets",
                                             "/open/v1/risk/feed"}
    assert client.get("/open/v1/docs").status_code == 200


# --- a race for the last secrets -----------------------------------------------------------------------------

def test_thirty_agents_race_for_five_secrets(app, f):
    tier = f.tier(discount_bp=9000)
    product = f.product(face_price=10_000, cost=8_000, secrets=5)
    buyers = []
    for _ in range(30):
        agent = f.agent(balance=50_000, tier_obj=tier)
        key, secret = new_key(agent)
        buyers.append((agent, key, secret))
    barrier = threading.Barrier(len(buyers))
    results: list = [None] * len(buyers)

    product_id = product.id
    with served(app) as base:
        clients = [api_client(base, key, secret) for _, key, secret in buyers]  # ORM reads stay in this thread

        def buy(i):
            client = clients[i]
            barrier.wait()
            try:
                results[i] = client.create_order(f"race-{i}", product_id)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc

        threads = [threading.Thread(target=buy, args=(i,)) for i in range(len(buyers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    assert all(hasattr(r, "status_code") for r in results), results
    won = [i for i, r in enumerate(results) if r.status_code == 201]
    lost = [i for i, r in enumerate(results) if r.status_code != 201]
    assert len(won) == 5, [(r.status_code, r.text[:100]) for r in results]
    for i in lost:
        assert_error(results[i], 409, "out_of_stock")
    delivered = [results[i].json() for i in won]
    assert all(o["status"] == "delivered" and len(o["card_secrets"]) == 1 for o in delivered)
    assert len({o["card_secrets"][0] for o in delivered}) == 5
    assert len({o["order_no"] for o in delivered}) == 5
    for i, (agent, _, _) in enumerate(buyers):
        assert f.wallet(agent) == (41_000 if i in won else 50_000), i
    assert order_count() == 5
    assert db.session.scalar(select(func.count()).select_from(CardSecret)
                             .where(CardSecret.status == "available")) == 0


# --- rate limit ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def limited_app(pg_url):
    return make_app(pg_url, RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                    OPENAPI_RATE_LIMIT="5 per minute")


def test_rate_limit_answers_429_with_retry_after(app, f, world, limited_app):
    client = limited_app.test_client()
    for i in range(5):
        r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance")
        assert r.status_code == 200, (i, r.text)
    r = signed_call(client, world.key, world.secret, "GET", "/open/v1/balance")
    assert_error(r, 429, "rate_limited")
    assert r.headers.get("Retry-After", "").isdigit() and 0 < int(r.headers["Retry-After"]) <= 60
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world))
    assert_error(r, 429)
    assert_nothing_moved(f, world)
    # The limit is per key: another key is not affected, and the spec stays public.
    other_key, other_secret = new_key(world.agent)
    assert signed_call(client, other_key, other_secret, "GET", "/open/v1/balance").status_code == 200
    for _ in range(7):
        assert client.get("/open/v1/openapi.json").status_code == 200


# --- keys: CLI, portal, admin --------------------------------------------------------------------------------

def test_cli_creates_a_working_key(app, f, client, world):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "api-key", "create", "--agent", world.agent.name])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    data = json.loads(lines[0])
    assert set(data) == {"app_key", "app_secret"}
    key = db.session.scalar(select(ApiKey).where(ApiKey.app_key == data["app_key"]))
    assert key is not None and key.agent_id == world.agent.id and data["app_secret"] not in key.secret_enc
    r = signed_call(client, key, data["app_secret"], "GET", "/open/v1/balance")
    assert r.status_code == 200 and r.get_json()["balance"] == 100_000

    result = runner.invoke(args=["kameng", "api-key", "create", "--agent", "nobody-here"])
    assert result.exit_code != 0
    assert "no agent with login 'nobody-here'" in result.stderr and result.stdout == ""
    staff = f.user(role="Support")
    result = runner.invoke(args=["kameng", "api-key", "create", "--agent", staff.username])
    assert result.exit_code != 0 and "no agent" in result.stderr
    result = runner.invoke(args=["kameng", "api-key", "create", "--agent", world.agent.name,
                                 "--allow-ip", "not-an-ip"])
    assert result.exit_code != 0 and "not-an-ip" in result.stderr


def test_portal_shows_the_secret_once_and_stores_it_encrypted(app, f, world):
    portal = app.test_client()
    f.login(portal, world.agent.name)
    r = portal.post("/portal/api-keys/create", data={"name": "我的小程序", "ip_allowlist": ""})
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    app_key = re.search(r'id="new-app-key">([^<]+)<', page).group(1)
    secret = re.search(r'id="new-app-secret">([^<]+)<', page).group(1)
    key = db.session.scalar(select(ApiKey).where(ApiKey.app_key == app_key))
    assert key.agent_id == world.agent.id and key.name == "我的小程序"
    assert key.secret_enc != secret and secret not in key.secret_enc and key.secret_hint == secret[-4:]
    listing = portal.get("/portal/api-keys/").get_data(as_text=True)
    assert app_key in listing and secret not in listing
    r = signed_call(app.test_client(), key, secret, "GET", "/open/v1/balance")
    assert r.status_code == 200

    r = portal.post("/portal/api-keys/create", data={"name": "x", "ip_allowlist": "300.1.1.1"}, follow_redirects=True)
    assert "300.1.1.1" in r.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.agent_id == world.agent.id)) == 2


def test_agents_cannot_revoke_another_agents_key(app, f, client, world):
    intruder = f.agent(tier_obj=world.tier)
    portal = app.test_client()
    f.login(portal, intruder.name)
    r = portal.post(f"/portal/api-keys/revoke/{world.key.id}")
    assert r.status_code in (302, 404)
    db.session.expire_all()
    assert db.session.get(ApiKey, world.key.id).active is True
    assert world.key.app_key not in portal.get("/portal/api-keys/").get_data(as_text=True)
    assert signed_call(client, world.key, world.secret, "GET", "/open/v1/balance").status_code == 200
    # Nor through the admin screens.
    r = portal.post("/api-keys/action_post", data={"action": "revoke", "rowid": str(world.key.id)})
    assert r.status_code in (302, 403)
    db.session.expire_all()
    assert db.session.get(ApiKey, world.key.id).active is True


def test_admin_revokes_any_key(app, f, client, world):
    admin = f.user(role="Admin")
    screens = app.test_client()
    f.login(screens, admin.username)
    listing = screens.get("/api-keys/list/")
    assert listing.status_code == 200 and world.key.app_key in listing.get_data(as_text=True)
    assert world.secret not in listing.get_data(as_text=True)
    r = screens.post("/api-keys/action_post", data={"action": "revoke", "rowid": str(world.key.id)})
    assert r.status_code == 302
    db.session.expire_all()
    assert db.session.get(ApiKey, world.key.id).active is False
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, order_body(world))
    assert_error(r, 401, "unauthorized")
    assert_nothing_moved(f, world)
    assert db.session.scalar(select(func.count()).select_from(Order)) == 0


def test_error_messages_follow_accept_language(app, f, world):
    """No session to choose a language in: Accept-Language does; Chinese by default, the code the same."""
    from flask_babel import refresh

    client = app.test_client()
    body = order_body(world, product_id=987654)
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, body)
    assert 400 <= r.status_code < 500
    assert r.get_json()["error"] == {"code": "product_unavailable", "message": "商品不存在或已下架"}
    body["out_trade_no"] = "lang-en"
    refresh()  # the test's app context (and its g, where Flask-Babel keeps the locale) spans both requests
    r = signed_call(client, world.key, world.secret, "POST", ORDERS, body,
                    headers={"Accept-Language": "en-US,en;q=0.9"})
    assert r.get_json()["error"] == {"code": "product_unavailable", "message": "Product not found or not on sale"}
    assert_nothing_moved(f, world)

"""app/cache.py: the purchase path's facts come from memory, and any change, by this process or another, is seen by
the next request. Changes made in "another process" are written through a separate engine connection, as a second
gunicorn worker or an admin's psql session would."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

from sqlalchemy import create_engine, event, text, update

from app.catalog.models import Product
from app.extensions import db
from tests.openapi_helpers import new_key, signed_call


def _buy(client, key, secret, product_id: int):
    return signed_call(client, key, secret, "POST", "/open/v1/orders",
                       {"out_trade_no": uuid.uuid4().hex, "product_id": product_id, "quantity": 1})


def _elsewhere(sql: str, **params) -> None:
    """A change committed on a connection this process's session knows nothing about."""
    engine = create_engine(db.engine.url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


class _Statements:
    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, _conn, _cursor, statement, *_args):
        self.seen.append(" ".join(statement.split()))

    def reading(self, table: str) -> list[str]:
        return [s for s in self.seen if s.startswith("SELECT") and f"FROM {table} " in s + " "]


def test_a_second_purchase_reads_no_catalogue_agent_or_key_rows(app, f, client):
    tier = f.tier(discount_bp=9000)
    agent = f.agent(balance=100_000, tier_obj=tier)
    product = f.product(face_price=10_000, secrets=3)
    key, secret = new_key(agent)
    product_id, key = product.id, SimpleNamespace(app_key=key.app_key)  # nothing for the test itself to reload
    assert _buy(client, key, secret, product_id).status_code == 201  # fills the cache
    statements = _Statements()
    event.listen(db.engine, "before_cursor_execute", statements)
    try:
        r = _buy(client, key, secret, product_id)
    finally:
        event.remove(db.engine, "before_cursor_execute", statements)
    assert r.status_code == 201, r.text
    assert r.get_json()["amount"] == 9_000
    for table in ("product", "agent", "tier", "tier_price", "price_rule", "api_key", "risk_list_entry",
                  "risk_rule"):
        assert statements.reading(table) == [], table


def test_a_price_changed_in_another_process_prices_the_next_order(app, f, client):
    tier = f.tier(discount_bp=9000)
    agent = f.agent(balance=100_000, tier_obj=tier)
    product = f.product(face_price=10_000, secrets=3)
    key, secret = new_key(agent)
    assert _buy(client, key, secret, product.id).get_json()["amount"] == 9_000
    _elsewhere("INSERT INTO tier_price (product_id, tier_id, price) VALUES (:p, :t, 7000)", p=product.id, t=tier.id)
    assert _buy(client, key, secret, product.id).get_json()["amount"] == 7_000
    _elsewhere("UPDATE tier SET discount_bp = 5000 WHERE id = :t", t=tier.id)
    _elsewhere("DELETE FROM tier_price WHERE tier_id = :t", t=tier.id)
    assert _buy(client, key, secret, product.id).get_json()["amount"] == 5_000


def test_a_product_taken_off_sale_or_a_key_revoked_elsewhere_is_refused_at_once(app, f, client):
    agent = f.agent(balance=100_000)
    product = f.product(face_price=1_000, secrets=3)
    key, secret = new_key(agent)
    assert _buy(client, key, secret, product.id).status_code == 201
    _elsewhere("UPDATE product SET active = false WHERE id = :p", p=product.id)
    r = _buy(client, key, secret, product.id)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "product_unavailable", r.text
    _elsewhere("UPDATE api_key SET active = false WHERE id = :k", k=key.id)
    assert _buy(client, key, secret, product.id).status_code == 401


def test_a_blacklist_entry_added_elsewhere_blocks_the_next_order(app, f, client):
    from app.risk import lists

    agent = f.agent(balance=100_000)
    product = f.product(face_price=1_000, secrets=3)
    key, secret = new_key(agent)
    assert _buy(client, key, secret, product.id).status_code == 201
    lists.add("agent", agent.user.username, "block", reason="test")  # commits in this session
    r = _buy(client, key, secret, product.id)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "risk_blocked", r.text


def test_without_a_version_row_nothing_is_served_from_memory(app, f, client):
    tier = f.tier(discount_bp=9000)
    agent = f.agent(balance=100_000, tier_obj=tier)
    product = f.product(face_price=10_000, secrets=3)
    key, secret = new_key(agent)
    assert _buy(client, key, secret, product.id).get_json()["amount"] == 9_000
    # a wiped version table, then a change the triggers could not record against the old number
    _elsewhere("DELETE FROM cache_version")
    _elsewhere("ALTER TABLE tier DISABLE TRIGGER kameng_cache_tier")
    try:
        _elsewhere("UPDATE tier SET discount_bp = 8000 WHERE id = :t", t=tier.id)
        assert _buy(client, key, secret, product.id).get_json()["amount"] == 8_000
    finally:
        _elsewhere("ALTER TABLE tier ENABLE TRIGGER kameng_cache_tier")


def test_a_change_flushed_in_this_transaction_is_read_back_by_the_same_unit(app, f):
    from app.orders import service as orders

    tier = f.tier(discount_bp=9000)
    agent = f.agent(balance=100_000, tier_obj=tier)
    product = f.product(face_price=10_000, secrets=3)
    assert orders.place_wallet_order(agent.id, product.id, 1).amount == 9_000
    tier.discount_bp = 6000  # pending in this session: the purchase's first cached read flushes it
    assert orders.place_wallet_order(agent.id, product.id, 1).amount == 6_000
    product_id = product.id
    db.session.execute(update(Product).where(Product.id == product_id).values(face_price=20_000))
    assert orders.place_wallet_order(agent.id, product_id, 1).amount == 12_000


def test_a_payment_channel_is_read_from_memory_and_switched_off_elsewhere_at_once(app, f, client):
    """Notifications read the channel's keys from memory; a channel switched off (or re-keyed) by another process
    is refused from the next notification on (the payment_channel trigger, migration c21p00000001)."""
    from tests import payments_helpers as h

    h.setup_sandbox()
    product = f.product(secrets=3)
    first, second, third = (h.guest_order(product, "sandbox", contact=f"1380000000{n}") for n in range(3))
    assert h.accepted("sandbox", h.notify(client, "sandbox", first, h.trade_no()))  # fills the cache
    statements = _Statements()
    event.listen(db.engine, "before_cursor_execute", statements)
    try:
        r = h.notify(client, "sandbox", second, h.trade_no())
    finally:
        event.remove(db.engine, "before_cursor_execute", statements)
    assert h.accepted("sandbox", r) and h.order_state(second.order_no) == "delivered"
    assert statements.reading("payment_channel") == []
    _elsewhere("UPDATE payment_channel SET enabled = false WHERE code = 'sandbox'")
    refused = h.notify(client, "sandbox", third, h.trade_no())
    assert not h.accepted("sandbox", refused) and h.order_state(third.order_no) == "pending_payment"


def test_spending_topped_up_money_keeps_the_cache_and_the_unspent_amount_exact(app, f, client):
    """A purchase that spends top-up money (agent.topup_unspent, which withdrawals read) leaves every process's
    cache in place (migration c21p00000001: that decrease alone does not move the version), yet the amount left
    unspent is exact, and a new top-up is spent by the next purchase."""
    from sqlalchemy import select

    from app.agents.models import Agent

    agent = f.agent(balance=100_000)
    product = f.product(face_price=10_000, secrets=5)
    key, secret = new_key(agent)
    agent_id, product_id, key = agent.id, product.id, SimpleNamespace(app_key=key.app_key)
    _elsewhere("UPDATE agent SET topup_unspent = 25000 WHERE id = :id", id=agent_id)  # as a top-up leaves it
    first = _buy(client, key, secret, product_id)  # fills the cache and spends its amount of the 25,000
    assert first.status_code == 201
    price = first.get_json()["amount"]
    statements = _Statements()
    event.listen(db.engine, "before_cursor_execute", statements)
    try:
        assert _buy(client, key, secret, product_id).status_code == 201
    finally:
        event.remove(db.engine, "before_cursor_execute", statements)
    assert statements.reading("agent") == [] and statements.reading("product") == []
    unspent = 25_000 - 2 * price
    assert 0 < unspent < price
    assert db.session.scalar(select(Agent.topup_unspent).where(Agent.id == agent_id)) == unspent
    for _ in range(2):  # spent down to nothing, then nothing more to spend
        assert _buy(client, key, secret, product_id).status_code == 201
        assert db.session.scalar(select(Agent.topup_unspent).where(Agent.id == agent_id)) == 0
    _elsewhere("UPDATE agent SET topup_unspent = 1000 WHERE id = :id", id=agent_id)  # a new top-up: spent next
    assert _buy(client, key, secret, product_id).status_code == 201
    assert db.session.scalar(select(Agent.topup_unspent).where(Agent.id == agent_id)) == 0

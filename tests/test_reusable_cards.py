"""Reusable cards (循环卡密): one secret sold to up to max_uses orders under a guarded counter, never twice to one
order; reveals recorded on every path a buyer sees secrets; a refund gives a use back only when it was never
revealed; the ledger invariants and the delivery chain adapted to secrets that belong to several orders."""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import func, select, text

from app import crypto
from app.catalog import cards
from app.catalog import service as catalog
from app.catalog.errors import OutOfStock
from app.catalog.models import CardSecret, CardSecretUse, Product
from app.errors import KamengError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.invariants import check_ledger
from app.orders import service as orders
from app.orders.models import Order
from app.payments import service as payments
from tests import payments_helpers as h
from tests.openapi_helpers import new_key, signed_call

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)


def uses_of(secret_id: int) -> tuple[int, int, str]:
    """(counter, use rows not given back, status) of a secret, read fresh."""
    db.session.rollback()
    secret = db.session.get(CardSecret, secret_id)
    rows = db.session.scalar(select(func.count()).select_from(CardSecretUse).where(
        CardSecretUse.secret_id == secret_id, CardSecretUse.returned_at.is_(None)))
    return secret.uses, rows, secret.status


def use_row(order_id: int) -> CardSecretUse:
    db.session.rollback()
    return db.session.scalar(select(CardSecretUse).where(CardSecretUse.order_id == order_id))


def assert_ledger_clean() -> None:
    db.session.rollback()
    assert check_ledger() == []


# --- stock and allocation ------------------------------------------------------------------------------------

@BOTH
def test_a_reusable_secret_is_sold_exactly_max_uses_times_then_out_of_stock(app, f):
    # given a reusable product with one secret sold up to 3 times
    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=1000, cost=0, max_uses=3)
    (plain,) = f.stock(p, 1)
    secret_id = db.session.scalar(select(CardSecret.id).where(CardSecret.product_id == p.id))
    assert db.session.get(CardSecret, secret_id).max_uses == 3  # the import copied the product's limit
    assert cards.available_counts([p.id]) == {p.id: 3}

    # when it is bought three times
    bought = [orders.place_wallet_order(buyer.id, p.id, 1) for _ in range(3)]

    # then each order has the same secret through its own use row, and the counter equals the rows
    assert all(o.status == "delivered" for o in bought)
    assert all(cards.reveal(o.id) == [plain] for o in bought)
    assert uses_of(secret_id) == (3, 3, "sold")
    assert cards.available_counts([p.id]) == {}
    assert db.session.scalar(select(CardSecret.order_id).where(CardSecret.id == secret_id)) is None
    # and a fourth is out of stock and changes nothing
    with pytest.raises(OutOfStock):
        orders.place_wallet_order(buyer.id, p.id, 1)
    assert uses_of(secret_id) == (3, 3, "sold")
    assert db.session.scalar(select(func.count()).select_from(Order)) == 3
    assert f.wallet(buyer) == 100_000 - 3 * p.face_price * buyer.tier.discount_bp // 10000
    assert_ledger_clean()


@BOTH
def test_one_order_never_gets_the_same_reusable_secret_twice(app, f):
    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=500, cost=0, max_uses=10)
    stocked = f.stock(p, 2)
    # two distinct secrets with uses left: an order of 3 cannot be filled, whatever the uses left
    with pytest.raises(OutOfStock):
        orders.place_wallet_order(buyer.id, p.id, 3)
    order = orders.place_wallet_order(buyer.id, p.id, 2)
    assert sorted(cards.reveal(order.id)) == sorted(stocked)
    rows = db.session.scalars(select(CardSecretUse.secret_id).where(CardSecretUse.order_id == order.id)).all()
    assert len(rows) == len(set(rows)) == 2
    assert cards.available_counts([p.id]) == {p.id: 18}
    assert_ledger_clean()


PG_ONLY = pytest.mark.parametrize("app", ["postgresql"], indirect=True)


def race(app, n: int, target) -> list[tuple[str, object]]:
    """target(i) in n real threads, each with its own app context and session, released together."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                results[i] = ("ok", target(i))
            except KamengError as exc:
                results[i] = (exc.code, None)
            except Exception as exc:  # noqa: BLE001 - reported below
                results[i] = ("crash", repr(exc))

    threads = [threading.Thread(target=run, args=(i,), name=f"buyer-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a buyer thread hung"
    assert not [r for r in results if r[0] == "crash"], results
    return results


def _buy(agent_id: int, product_id: int, quantity: int = 1) -> dict:
    order = orders.place_wallet_order(agent_id, product_id, quantity)
    secret_ids = db.session.scalars(select(CardSecretUse.secret_id).where(CardSecretUse.order_id == order.id)).all()
    return {"order_id": order.id, "agent_id": agent_id, "secret_ids": sorted(secret_ids)}


@PG_ONLY
def test_thirty_concurrent_buyers_get_a_reusable_secret_exactly_max_uses_times(app, f):
    # given 30 agents and one reusable secret that may be sold 12 times
    tier = f.tier(discount_bp=10000)
    buyers = [f.agent(tier_obj=tier, balance=10_000, with_user=False) for _ in range(30)]
    p = f.product(face_price=1000, cost=100, max_uses=12)
    f.stock(p, 1)
    secret_id = db.session.scalar(select(CardSecret.id).where(CardSecret.product_id == p.id))
    buyer_ids, pid = [b.id for b in buyers], p.id
    db.session.commit()

    # when all 30 buy one at the same moment (real threads, each its own PostgreSQL transaction)
    started = time.monotonic()
    results = race(app, 30, lambda i: _buy(buyer_ids[i], pid))
    elapsed = time.monotonic() - started

    # then exactly 12 are delivered (a buyer waiting on the busy row is not told out of stock), 18 out_of_stock
    assert Counter(code for code, _ in results) == {"ok": 12, "out_of_stock": 18}, (results, elapsed)
    won = [r for code, r in results if code == "ok"]
    assert all(r["secret_ids"] == [secret_id] for r in won)
    assert len({r["order_id"] for r in won}) == 12
    # and the guarded counter equals the use rows, at the limit
    assert uses_of(secret_id) == (12, 12, "sold")
    # and each winner paid once, each loser nothing
    winners = {r["agent_id"] for r in won}
    for agent_id in buyer_ids:
        assert ledger.agent_balances(agent_id)["wallet"] == (9000 if agent_id in winners else 10_000)
    assert db.session.scalar(select(func.count()).select_from(Order)) == 12
    assert_ledger_clean()


@PG_ONLY
def test_concurrent_buyers_of_several_secrets_each_take_distinct_ones_without_deadlock(app, f):
    # given four reusable secrets of 5 uses each and 20 buyers of two cards each
    tier = f.tier(discount_bp=10000)
    buyers = [f.agent(tier_obj=tier, balance=10_000, with_user=False) for _ in range(20)]
    p = f.product(face_price=1000, cost=0, max_uses=5)
    f.stock(p, 4)
    buyer_ids, pid = [b.id for b in buyers], p.id
    db.session.commit()

    results = race(app, 20, lambda i: _buy(buyer_ids[i], pid, 2))

    # then the lowest ids are used up first, two distinct secrets per order: five orders get secrets 1 and 2, five
    # (having waited on 1 and 2 until they were used up) get 3 and 4; the rest are out of stock, none deadlocked
    won = [r for code, r in results if code == "ok"]
    assert Counter(code for code, _ in results) == {"ok": 10, "out_of_stock": 10}, results
    assert Counter(tuple(r["secret_ids"]) for r in won) == {(1, 2): 5, (3, 4): 5}
    db.session.rollback()
    assert db.session.execute(select(CardSecret.uses, CardSecret.status).where(CardSecret.product_id == pid)
                              .order_by(CardSecret.id)).all() == [(5, "sold")] * 4
    assert_ledger_clean()


@PG_ONLY
def test_normal_products_still_allocate_with_skip_locked_and_never_touch_the_use_table(app, f):
    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=1000, secrets=3)
    statements: list[str] = []

    from sqlalchemy import event

    def seen(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        order = orders.place_wallet_order(buyer.id, p.id, 2)
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    allocation = [s for s in statements if "UPDATE card_secret" in s]
    assert len(allocation) == 1 and "SKIP LOCKED" in allocation[0]
    assert not any("card_secret_use" in s for s in statements)
    assert db.session.scalar(select(func.count()).select_from(CardSecretUse)) == 0
    assert len(cards.reveal(order.id)) == 2


# --- reveals and refunds ---------------------------------------------------------------------------------------

@BOTH
def test_a_refund_gives_back_only_a_use_that_was_never_revealed(app, f):
    # given one reusable secret of 2 uses, sold twice (so it is sold out)
    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=1000, cost=0, max_uses=2)
    f.stock(p, 1)
    shown, unseen = (orders.place_wallet_order(buyer.id, p.id, 1) for _ in range(2))
    shown_id, unseen_id = shown.id, unseen.id
    secret_id = db.session.scalar(select(CardSecret.id).where(CardSecret.product_id == p.id))
    # and the buyer was shown the first order's secret only
    cards.reveal(shown_id)
    db.session.commit()
    assert use_row(shown_id).revealed_at is not None and use_row(unseen_id).revealed_at is None
    assert uses_of(secret_id) == (2, 2, "sold")

    # when both orders are refunded
    payments.refund_order(shown_id, "revealed", None)
    payments.refund_order(unseen_id, "never revealed", None)

    # then the revealed use stays counted; the unrevealed one is given back and the secret is on sale again
    assert use_row(shown_id).returned_at is None
    assert use_row(unseen_id).returned_at is not None
    assert uses_of(secret_id) == (1, 1, "available")
    assert cards.available_counts([p.id]) == {p.id: 1}
    again = orders.place_wallet_order(buyer.id, p.id, 1)
    assert uses_of(secret_id) == (2, 2, "sold")
    assert again.status == "delivered"
    assert_ledger_clean()


def test_every_way_a_buyer_sees_secrets_records_the_reveal(app, client, f):
    # given a reusable product and the ways its secrets reach a buyer
    agent = f.agent(balance=100_000)
    p = f.product(face_price=1000, cost=0, max_uses=50)
    f.stock(p, 1)
    key, secret = new_key(agent)
    h.setup_sandbox()

    # the Open API's purchase answer carries the secret: revealed in the purchase's own transaction
    r = signed_call(client, key, secret, "POST", "/open/v1/orders",
                    {"out_trade_no": uuid.uuid4().hex, "product_id": p.id, "quantity": 1})
    assert r.status_code == 201 and len(r.get_json()["card_secrets"]) == 1
    api_order = db.session.scalar(select(Order.id).where(Order.order_no == r.get_json()["order_no"]))
    assert use_row(api_order).revealed_at is not None

    # the Open API's order lookup
    portal_order = orders.place_wallet_order(agent.id, p.id, 1)
    looked_up = orders.place_wallet_order(agent.id, p.id, 1)
    looked_no, portal_id, looked_id = looked_up.order_no, portal_order.id, looked_up.id
    assert use_row(looked_id).revealed_at is None
    r = signed_call(client, key, secret, "GET", f"/open/v1/orders/{looked_no}")
    assert r.status_code == 200 and len(r.get_json()["card_secrets"]) == 1
    assert use_row(looked_id).revealed_at is not None

    # the portal's order page
    portal = f.login(app.test_client(), agent.user.username)
    assert use_row(portal_id).revealed_at is None
    page = portal.get(f"/portal/orders/{db.session.get(Order, portal_id).order_no}")
    assert page.status_code == 200 and 'class="card-secret"' in page.get_data(as_text=True)
    assert use_row(portal_id).revealed_at is not None

    # the storefront lookup (a guest order paid through the sandbox)
    r = client.post("/shop/api/orders", json={"product_id": p.id, "quantity": 1, "contact": "13800138000",
                                              "query_password": "pass-1234", "channel": "sandbox"})
    assert r.status_code == 201, r.get_data(as_text=True)
    guest_no, amount = r.get_json()["order_no"], r.get_json()["amount"]
    paid = client.post("/pay/notify/sandbox", data=h.sandbox_form(guest_no, h.trade_no("SBX"), amount))
    assert paid.get_data(as_text=True) == "success"
    guest_id = db.session.scalar(select(Order.id).where(Order.order_no == guest_no))
    assert use_row(guest_id).revealed_at is None
    r = client.post("/shop/api/lookup", json={"order_no": guest_no, "query_password": "pass-1234"})
    assert r.status_code == 200 and len(r.get_json()["card_secrets"]) == 1
    assert use_row(guest_id).revealed_at is not None
    assert_ledger_clean()


def test_the_portal_records_only_the_page_of_secrets_it_shows(app, f, monkeypatch):
    from app.portal import service as portal_service

    monkeypatch.setattr(portal_service, "SECRETS_PER_PAGE", 2)
    agent = f.agent(balance=100_000)
    p = f.product(face_price=100, cost=0, max_uses=5, max_per_order=10)
    f.stock(p, 5)
    order = orders.place_wallet_order(agent.id, p.id, 5)
    order_no, order_id = order.order_no, order.id
    portal = f.login(app.test_client(), agent.user.username)

    page = portal.get(f"/portal/orders/{order_no}?page=2").get_data(as_text=True)
    assert page.count('class="card-secret"') == 2 and "第 2 / 3 页" in page

    db.session.rollback()
    marked = db.session.execute(select(CardSecretUse.secret_id, CardSecretUse.revealed_at.is_not(None))
                                .where(CardSecretUse.order_id == order_id).order_by(CardSecretUse.secret_id)).all()
    assert [shown for _, shown in marked] == [False, False, True, True, False]
    # a refund now gives back the three never shown, keeps the two shown
    payments.refund_order(order_id, "partly seen", None)
    db.session.rollback()
    assert sorted(db.session.scalars(select(CardSecret.uses).where(CardSecret.product_id == p.id))) == [0, 0, 0, 1, 1]
    assert_ledger_clean()


def test_a_reveal_and_a_refund_at_the_same_moment_never_both_win(app, f, pg_url):
    """The refund's UPDATE of the use row and the reveal's take the same row lock: whichever is first, the other
    sees its result (a use is either shown and kept, or given back and not shown)."""
    agent = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=100, cost=0, max_uses=5)
    f.stock(p, 1)
    order = orders.place_wallet_order(agent.id, p.id, 1)
    order_id, secret_id = order.id, db.session.scalar(select(CardSecret.id).where(CardSecret.product_id == p.id))
    db.session.commit()
    locked, release, outcome = threading.Event(), threading.Event(), {}

    def refunder():
        with app.app_context():
            from app.extensions import db as tdb

            # the refund's give-back has run (use row locked) but is not committed yet
            cards.void_order_secrets(order_id)
            locked.set()
            release.wait(30)
            tdb.session.commit()

    def revealer():
        with app.app_context():
            from app.extensions import db as tdb

            outcome["shown"] = cards.reveal(order_id)
            tdb.session.commit()

    t1 = threading.Thread(target=refunder)
    t1.start()
    assert locked.wait(30)
    t2 = threading.Thread(target=revealer)
    t2.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the reveal waits on the refund's row lock
        waiting = db.session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()"))
        db.session.rollback()
        if waiting:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the reveal never waited on the refund's row lock")
    release.set()
    t1.join(30)
    t2.join(30)
    assert outcome["shown"] == []  # given back, so not shown
    assert use_row(order_id).returned_at is not None and use_row(order_id).revealed_at is None
    assert uses_of(secret_id) == (0, 0, "available")
    # the order itself: refund it properly so the ledger matches (its use is already back)
    payments.refund_order(order_id, "test", None)
    assert uses_of(secret_id) == (0, 0, "available")
    assert_ledger_clean()


# --- the product's mode and limit ------------------------------------------------------------------------------

@BOTH
def test_raising_or_lowering_max_uses_applies_to_the_stock(app, f):
    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=100, cost=0, max_uses=2)
    f.stock(p, 2)
    orders.place_wallet_order(buyer.id, p.id, 2)
    orders.place_wallet_order(buyer.id, p.id, 2)
    assert cards.available_counts([p.id]) == {}
    # raised: both sold-out secrets are on sale again
    assert catalog.apply_max_uses(p.id, 3) == 2
    db.session.commit()
    assert cards.available_counts([p.id]) == {p.id: 2}
    # lowered below what was sold: the limit stops at the uses sold (never below), the secrets are sold out
    catalog.apply_max_uses(p.id, 1)
    db.session.commit()
    assert db.session.execute(select(CardSecret.uses, CardSecret.max_uses, CardSecret.status)
                              .where(CardSecret.product_id == p.id)).all() == [(2, 2, "sold")] * 2
    assert_ledger_clean()


def test_the_product_form_sets_the_mode_and_refuses_to_switch_it_once_stocked(app, f):
    admin = f.user(f.unique("admin"), role="Admin")
    staff = f.login(app.test_client(), admin.username)
    cat, supplier = f.category(), catalog.platform_supplier()
    db.session.commit()
    form = {"name": "共享教程下载码", "category": cat.id, "supplier": supplier.id, "kind": "card", "face_price": "9.90",
            "cost": "0", "max_per_order": "5", "low_stock_threshold": "1", "reusable": "y", "max_uses": "20",
            "active": "y"}
    assert staff.post("/products/add", data=form).status_code == 302
    product = db.session.scalar(select(Product).where(Product.name == "共享教程下载码"))
    assert (product.reusable, product.max_uses) == (True, 20)
    # a reusable direct product, or no limit, is refused
    refusals = (({"kind": "direct"}, "只有卡密类商品可以设为循环卡密"), ({"max_uses": ""}, "每卡可售次数须在"))
    for bad, message in refusals:
        r = staff.post("/products/add", data={**form, "name": f.unique("bad"), **bad}, follow_redirects=True)
        assert message in r.get_data(as_text=True)
        assert db.session.scalar(select(func.count()).select_from(Product)) == 1
    # stocked: switching the mode is refused; the limit can change and reaches the stock
    f.stock(product, 2)
    r = staff.post(f"/products/edit/{product.id}", data={**form, "reusable": ""}, follow_redirects=True)
    assert "不能切换循环卡密模式" in r.get_data(as_text=True)
    db.session.rollback()
    assert db.session.get(Product, product.id).reusable is True
    assert staff.post(f"/products/edit/{product.id}", data={**form, "max_uses": "30"}).status_code == 302
    db.session.rollback()
    assert set(db.session.scalars(select(CardSecret.max_uses).where(CardSecret.product_id == product.id))) == {30}


# --- the chain and the invariants ------------------------------------------------------------------------------

def test_deliveries_of_reusable_secrets_are_chained_and_verify_after_a_refund(app, f):
    from app.chain import service as chain

    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=100, cost=0, max_uses=3)
    stocked = f.stock(p, 2)
    first = orders.place_wallet_order(buyer.id, p.id, 2)
    second = orders.place_wallet_order(buyer.id, p.id, 1)
    first_no, first_id = first.order_no, first.id
    # the records cover each delivery's secrets (the same secret in both)
    content = chain._delivery_digests(Order.order_no.in_([first_no]))[first_no]
    expected = chain.content_digest(chain.delivery_content(
        first_no, first.amount, p.id, buyer.id, None, [crypto.keyed_hash(p.id, s) for s in stocked],
        db.session.get(Order, first_id).delivered_at))
    assert content == expected
    assert second.status == "delivered"
    # a refund that gives the uses back leaves the delivery's record as it was
    payments.refund_order(first_id, "never looked", None)
    result = app.test_cli_runner().invoke(args=["kameng", "chain", "verify"])
    assert result.exit_code == 0, result.output
    assert_ledger_clean()


def _sql(statement: str, **params) -> None:
    db.session.execute(text(statement), params)
    db.session.commit()


@BOTH
def test_the_ledger_check_names_each_broken_reusable_invariant(app, f):
    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=100, cost=0, max_uses=3)
    normal = f.product(face_price=100, cost=0, secrets=2)
    f.stock(p, 1)
    order = orders.place_wallet_order(buyer.id, p.id, 1)
    sold_normal = orders.place_wallet_order(buyer.id, normal.id, 1)
    order_id, normal_order_id = order.id, sold_normal.id
    reusable_id = db.session.scalar(select(CardSecret.id).where(CardSecret.product_id == p.id))
    normal_id = db.session.scalar(select(CardSecret.id).where(CardSecret.order_id == normal_order_id))
    assert check_ledger() == []

    def broken(name: str) -> bool:
        db.session.rollback()
        return any(line.startswith(name) for line in check_ledger())

    # a use row without its count (the counter skipped): the counter differs from the rows
    other = orders.place_wallet_order(buyer.id, normal.id, 1).id
    _sql("INSERT INTO card_secret_use (secret_id, order_id, sold_at) VALUES (:s, :o, CURRENT_TIMESTAMP)",
         s=reusable_id, o=other)
    assert broken("reusable card secret whose use counter differs from its uses")
    _sql("DELETE FROM card_secret_use WHERE order_id = :o", o=other)
    # a normal (sold once) secret given a use row: it would belong to two orders
    _sql("INSERT INTO card_secret_use (secret_id, order_id, sold_at) VALUES (:s, :o, CURRENT_TIMESTAMP)",
         s=normal_id, o=order_id)
    assert broken("normal card secret sold as a reusable one")
    _sql("DELETE FROM card_secret_use WHERE secret_id = :s", s=normal_id)
    # a delivered reusable order whose use was given back behind the refund's back
    _sql("UPDATE card_secret_use SET returned_at = CURRENT_TIMESTAMP WHERE order_id = :o", o=order_id)
    assert broken("delivered card order without its card secrets")
    assert broken("reusable card secret whose use counter differs from its uses")
    _sql("UPDATE card_secret_use SET returned_at = NULL WHERE order_id = :o", o=order_id)
    assert check_ledger() == []


@BOTH
def test_the_database_refuses_a_counter_past_the_limit_or_a_reusable_secret_owned_by_one_order(app, f):
    from sqlalchemy.exc import IntegrityError

    buyer = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=100, cost=0, max_uses=2)
    f.stock(p, 1)
    order = orders.place_wallet_order(buyer.id, p.id, 1)
    secret_id = db.session.scalar(select(CardSecret.id).where(CardSecret.product_id == p.id))
    for statement in ("UPDATE card_secret SET uses = 3 WHERE id = :s",
                      "UPDATE card_secret SET order_id = :o WHERE id = :s",
                      "UPDATE card_secret SET status = 'sold' WHERE id = :s",  # sold while a use is left
                      "UPDATE card_secret_use SET revealed_at = CURRENT_TIMESTAMP, returned_at = CURRENT_TIMESTAMP "
                      "WHERE secret_id = :s",
                      "INSERT INTO card_secret_use (secret_id, order_id, sold_at) VALUES (:s, :o, CURRENT_TIMESTAMP)"):
        with pytest.raises(IntegrityError):
            db.session.execute(text(statement), {"s": secret_id, "o": order.id})
            db.session.flush()
        db.session.rollback()
    assert uses_of(secret_id) == (1, 1, "available")

"""Disputes (维权): filing by a storefront buyer (JSON and the lookup form) and by an agent (own order only), the
supplier-payable freeze/release journals, reject and refund resolutions (balances back exactly), compensation
coupons usable once by that buyer, the support queue's age / overdue flag, and who may reach which screen."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from app.audit.models import AuditEntry
from app.clock import utcnow
from app.errors import KamengError
from app.ledger.models import Journal
from app.ledger.service import balance_of, supplier_account_code
from app.orders import service as orders
from app.orders.models import Order
from app.payments import disputes
from app.payments.models import Coupon, Dispute
from tests.test_coupons import PASSWORD, create_order, notify, setup_sandbox


def account_balances(db) -> dict[str, int]:
    rows = db.session.execute(text(
        "SELECT a.code, COALESCE(SUM(p.amount), 0) FROM ledger_account a "
        "LEFT JOIN ledger_posting p ON p.account_id = a.id GROUP BY a.code")).all()
    return {code: int(total) for code, total in rows}


def paid_storefront_order(db, f, client, contact="13900000000", fee_bp=500, cost=8000):
    """A delivered storefront order of a supplier with a 5% service fee; returns (order, balances before it)."""
    setup_sandbox()
    p = f.product(face_price=10000, cost=cost, secrets=2, supplier_fee_bp=fee_bp)
    before = account_balances(db)
    data = create_order(client, p.id, contact=contact).get_json()
    assert notify(client, data["order_no"], data["amount"]).data == b"success"
    order = db.session.scalar(select(Order).where(Order.order_no == data["order_no"]))
    assert order.status == "delivered"
    return order, before


def staff(f, client, role="Support"):
    u = f.user(role=role)
    f.login(client, u.username)
    return u


# --- filing by a storefront buyer ------------------------------------------------------------------------------

def test_buyer_files_dispute_and_payable_is_frozen(app, db, f, client):
    order, _ = paid_storefront_order(db, f, client)
    payable = supplier_account_code(order.supplier_id)
    assert (order.cost_total, order.service_fee) == (8000, 400)
    payable_before = balance_of(payable)
    r = client.post("/shop/api/disputes", json={"order_no": order.order_no, "query_password": PASSWORD,
                                                "reason": "卡密无效 not received"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["order_status"] == "disputed" and r.get_json()["dispute"]["status"] == "open"
    db.session.expire_all()
    assert order.status == "disputed"
    assert balance_of(payable) == payable_before - 7600
    assert balance_of(disputes.HELD) == 7600
    assert db.session.scalar(select(Journal.kind).where(
        Journal.idempotency_key == f"dispute:{order.order_no}:freeze")) == "dispute_freeze"
    d = db.session.scalar(select(Dispute))
    assert (d.contact, d.opened_by_id, d.status) == ("13900000000", None, "open")
    # one dispute per order
    r = client.post("/shop/api/disputes", json={"order_no": order.order_no, "query_password": PASSWORD,
                                                "reason": "again"})
    assert r.status_code == 409
    assert db.session.scalar(select(func.count()).select_from(Dispute)) == 1
    # the lookup shows it
    look = client.post("/shop/api/lookup", json={"order_no": order.order_no, "query_password": PASSWORD})
    assert look.get_json()["dispute"]["status"] == "open"


def test_wrong_password_answers_like_an_unknown_order(app, db, f, client):
    order, _ = paid_storefront_order(db, f, client)
    before = account_balances(db)
    wrong = client.post("/shop/api/disputes", json={"order_no": order.order_no, "query_password": "wrong-pass",
                                                    "reason": "x"})
    unknown = client.post("/shop/api/disputes", json={"order_no": "999999999999999999",
                                                      "query_password": PASSWORD, "reason": "x"})
    assert wrong.status_code == unknown.status_code == 404
    assert wrong.get_json() == unknown.get_json()
    assert account_balances(db) == before
    assert db.session.scalar(select(func.count()).select_from(Dispute)) == 0
    bad = client.post("/shop/api/disputes", json={"order_no": order.order_no, "query_password": PASSWORD,
                                                  "reason": "  "})
    assert bad.status_code == 400


def test_only_delivered_orders_can_be_disputed(app, db, f, client):
    setup_sandbox()
    p = f.product(secrets=1)
    data = create_order(client, p.id).get_json()  # unpaid
    r = client.post("/shop/api/disputes", json={"order_no": data["order_no"], "query_password": PASSWORD,
                                                "reason": "x"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "not_disputable"
    assert db.session.scalar(select(func.count()).select_from(Dispute)) == 0


def test_lookup_page_dispute_form(app, db, f, client):
    order, _ = paid_storefront_order(db, f, client)
    page = client.post("/shop/lookup", data={"order_no": order.order_no, "query_password": PASSWORD})
    assert 'id="dispute-form"' in page.data.decode()
    r = client.post("/shop/dispute", data={"order_no": order.order_no, "query_password": "nope-nope",
                                           "reason": "x"})
    assert r.status_code == 404
    r = client.post("/shop/dispute", data={"order_no": order.order_no, "query_password": PASSWORD,
                                           "reason": "没收到"})
    assert r.status_code == 201 and 'id="dispute-status"' in r.data.decode()
    db.session.expire_all()
    assert order.status == "disputed"


# --- filing by an agent ----------------------------------------------------------------------------------------

def test_agent_files_on_own_order_only(app, db, f, client):
    root = f.agent(balance=50000)
    child = f.agent(parent=root, balance=50000)
    stranger = f.agent(balance=50000)
    p = f.product(face_price=10000, cost=8000, secrets=5, supplier_fee_bp=500)
    own = orders.place_wallet_order(root.id, p.id, 1)
    childs = orders.place_wallet_order(child.id, p.id, 1)
    other = orders.place_wallet_order(stranger.id, p.id, 1)
    own_no, child_no, other_no = own.order_no, childs.order_no, other.order_no
    f.login(client, root.name)
    before = account_balances(db)
    assert client.post(f"/portal/disputes/{other_no}", data={"reason": "x"}).status_code == 404
    assert client.get(f"/portal/disputes/{other_no}").status_code == 404
    assert client.post(f"/portal/disputes/{child_no}", data={"reason": "x"}).status_code == 404  # not its own
    assert account_balances(db) == before
    with pytest.raises(KamengError) as e:  # the service re-checks scope too
        disputes.open_as_agent(root, other_no, "x", None)
    assert e.value.status == 404
    with pytest.raises(KamengError) as e:
        disputes.open_as_agent(root, child_no, "x", None)
    assert e.value.status == 403

    assert 'id="dispute-form"' in client.get(f"/portal/disputes/{own_no}").data.decode()
    assert 'id="dispute-link"' in client.get(f"/portal/orders/{own_no}").data.decode()
    r = client.post(f"/portal/disputes/{own_no}", data={"reason": "卡密提示已使用"})
    assert r.status_code == 302
    d = db.session.scalar(select(Dispute))
    assert d.order.order_no == own_no and d.opened_by_id == root.user_id
    assert balance_of(disputes.HELD) == 7600
    assert db.session.scalar(select(Order.status).where(Order.order_no == other_no)) == "delivered"


# --- resolving -------------------------------------------------------------------------------------------------

def test_reject_releases_the_freeze_and_restores_delivered(app, db, f, client):
    order, _ = paid_storefront_order(db, f, client)
    payable = supplier_account_code(order.supplier_id)
    after_sale = account_balances(db)
    first_delivered_at = order.delivered_at
    d = disputes.open_as_buyer(order.order_no, PASSWORD, "not received")
    assert balance_of(payable) == after_sale[payable] - 7600
    support = staff(f, client)
    r = client.post(f"/disputes/{d.id}", data={"outcome": "reject", "resolution": ""})
    assert r.status_code == 400  # a reason is required
    db.session.expire_all()
    assert d.status == "open" and order.status == "disputed"
    r = client.post(f"/disputes/{d.id}", data={"outcome": "reject", "resolution": "卡密已于 10:02 兑换成功"})
    assert r.status_code == 302
    db.session.expire_all()
    assert (d.status, d.resolved_by_id, order.status) == ("rejected", support.id, "delivered")
    assert order.delivered_at == first_delivered_at  # settlement still counts from the first delivery
    assert account_balances(db) == {**after_sale, disputes.HELD: 0}
    assert db.session.scalar(select(Journal.id).where(
        Journal.idempotency_key == f"dispute:{order.order_no}:release")) is not None
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "dispute.resolve"))
    assert entry.actor_id == support.id and "10:02" in entry.reason
    # resolved once only
    r = client.post(f"/disputes/{d.id}", data={"outcome": "refund", "resolution": "again"})
    assert r.status_code == 400
    db.session.expire_all()
    assert order.status == "delivered"


def test_refund_resolution_reverses_everything_and_compensation_coupon_works_once(app, db, f, client):
    order, before = paid_storefront_order(db, f, client, contact="buyer@x.cn")
    d = disputes.open_as_buyer(order.order_no, PASSWORD, "not received")
    staff(f, client)
    r = client.post(f"/disputes/{d.id}", data={"outcome": "refund", "resolution": "上游确认未发货",
                                               "compensation": "5"})
    assert r.status_code == 302
    db.session.expire_all()
    assert (d.status, order.status) == ("refunded", "refunded")
    after = account_balances(db)
    # every account is back to its value before the order (the new accounts opened by the product excepted)
    assert {k: v for k, v in after.items() if v or k in before} == {k: v for k, v in before.items()
                                                                     if v or k in after}
    assert all(after.get(k, 0) == v for k, v in before.items())
    assert after[disputes.HELD] == 0
    coupon = d.compensation_coupon
    assert (coupon.kind, coupon.value, coupon.per_user_limit, coupon.total_limit) == ("fixed", 500, 1, 1)
    assert timedelta(days=29) < coupon.ends_at - coupon.starts_at <= timedelta(days=30)
    look = client.post("/shop/api/lookup", json={"order_no": order.order_no, "query_password": PASSWORD})
    assert look.get_json()["dispute"]["compensation_coupon"]["code"] == coupon.code

    # the compensation coupon: not for someone else, once for the buyer
    p = f.product(face_price=10000, secrets=3)
    r = create_order(client, p.id, coupon=coupon.code, contact="other@x.cn")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "coupon_invalid"
    r = create_order(client, p.id, coupon=coupon.code, contact="buyer@x.cn")
    assert r.status_code == 201 and r.get_json()["amount"] == 9500
    r = create_order(client, p.id, coupon=coupon.code, contact="buyer@x.cn")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "coupon_used_up"


def test_refund_of_an_agents_wallet_order_via_dispute(app, db, f, client):
    a = f.agent(balance=30000)
    p = f.product(face_price=10000, cost=8000, secrets=2, supplier_fee_bp=500)
    before = account_balances(db)
    order = orders.place_wallet_order(a.id, p.id, 1)
    d = disputes.open_as_agent(a, order.order_no, "not received", a.user_id)
    disputes.resolve(d.id, "refund", "refund it", None, compensation_fen=300)
    assert f.wallet(a) == 30000
    assert account_balances(db) == before
    assert d.compensation_coupon is not None
    assert db.session.scalar(select(Coupon.code)) == d.compensation_coupon.code
    db.session.expire_all()
    again = orders.place_wallet_order(a.id, p.id, 1, coupon=d.compensation_coupon.code)
    assert again.amount == order.amount - 300


def test_resolve_validation(app, db, f, client):
    order, _ = paid_storefront_order(db, f, client)
    d = disputes.open_as_buyer(order.order_no, PASSWORD, "x")
    snapshot = account_balances(db)
    for outcome, reason, comp in (("maybe", "r", None), ("refund", "", None), ("refund", "r", -1),
                                  ("refund", "r", order.amount + 1)):
        with pytest.raises(KamengError):
            disputes.resolve(d.id, outcome, reason, None, compensation_fen=comp)
    db.session.expire_all()
    assert d.status == "open" and account_balances(db) == snapshot
    assert db.session.scalar(select(func.count()).select_from(Coupon)) == 0


# --- the support queue and roles -------------------------------------------------------------------------------

def test_queue_shows_age_and_overdue_flag_oldest_first(app, db, f, client):
    setup_sandbox()
    o1, _ = paid_storefront_order(db, f, client, contact="one@x.cn")
    o2, _ = paid_storefront_order(db, f, client, contact="two@x.cn")
    d_new = disputes.open_as_buyer(o1.order_no, PASSWORD, "new one")
    d_old = disputes.open_as_buyer(o2.order_no, PASSWORD, "old one")
    db.session.execute(Dispute.__table__.update().where(Dispute.id == d_new.id)
                       .values(opened_at=utcnow() - timedelta(minutes=5, seconds=10)))
    db.session.execute(Dispute.__table__.update().where(Dispute.id == d_old.id)
                       .values(opened_at=utcnow() - timedelta(minutes=45, seconds=10)))
    db.session.commit()
    rows = disputes.open_queue()
    assert [(r.dispute.id, r.age_minutes, r.overdue) for r in rows] == [(d_old.id, 45, True), (d_new.id, 5, False)]

    staff(f, client)
    page = client.get("/disputes/").data.decode()
    assert page.index(f'data-dispute-id="{d_old.id}"') < page.index(f'data-dispute-id="{d_new.id}"')
    assert page.count("overdue-flag") == 1 and 'data-age="45"' in page and 'data-age="5"' in page
    assert f'href="/disputes/{d_old.id}"' in page
    detail = client.get(f"/disputes/{d_old.id}").data.decode()
    assert 'id="resolve-form"' in detail and "overdue-flag" in detail
    assert client.get("/dispute-records/list/").status_code == 200


def test_agent_cannot_reach_support_screens(app, db, f, client):
    order, _ = paid_storefront_order(db, f, client)
    d = disputes.open_as_buyer(order.order_no, PASSWORD, "x")
    a = f.agent()
    f.login(client, a.name)
    for url in ("/disputes/", f"/disputes/{d.id}", "/dispute-records/list/", "/coupons/list/"):
        r = client.get(url)
        assert r.status_code in (302, 403), url
    r = client.post(f"/disputes/{d.id}", data={"outcome": "refund", "resolution": "agent tries"})
    assert r.status_code in (302, 403)
    db.session.expire_all()
    assert d.status == "open" and order.status == "disputed"


def test_manager_reads_disputes_and_coupons_but_cannot_resolve(app, db, f, client):
    order, _ = paid_storefront_order(db, f, client)
    d = disputes.open_as_buyer(order.order_no, PASSWORD, "x")
    staff(f, client, role="Manager")
    assert client.get("/disputes/").status_code == 200
    assert client.get("/dispute-records/list/").status_code == 200
    assert client.get("/coupons/list/").status_code == 200
    r = client.post(f"/disputes/{d.id}", data={"outcome": "refund", "resolution": "manager tries"})
    assert r.status_code in (302, 403)
    assert client.get("/coupons/add").status_code in (302, 403)
    db.session.expire_all()
    assert d.status == "open" and order.status == "disputed"

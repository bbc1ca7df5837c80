"""Coupons: maths (fixed, percent floored once, never below 1 fen), min spend, validity window edges, per-user and
total limits (incl. thread races on PostgreSQL), checkout through POST /shop/api/orders paid by a sandbox
notification of the discounted amount, refusals that write nothing, release on expiry, and the admin screen."""
from __future__ import annotations

import secrets
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditEntry
from app.clock import utcnow
from app.crypto import pii_hash
from app.errors import KamengError
from app.ledger.models import Journal
from app.orders import service as orders
from app.orders.models import Order
from app.payments import coupons
from app.payments import service as payments
from app.payments.channels import sandbox
from app.payments.models import Coupon, CouponRedemption, OrderCheckout

KEY = "coupon-sandbox-key-0123"
PASSWORD = "order-pass-123"


# --- helpers ---------------------------------------------------------------------------------------------------

def make_coupon(db, code="SAVE", kind="fixed", value=500, **kw) -> Coupon:
    now = utcnow()
    kw.setdefault("starts_at", now - timedelta(days=1))
    kw.setdefault("ends_at", now + timedelta(days=1))
    c = coupons.create_coupon(code, f"券 {code}", kind, value, **kw)
    db.session.commit()
    return c


def setup_sandbox():
    payments.save_channel("sandbox", True, {"key": KEY})


def create_order(client, product_id, coupon=None, contact="13800000000", quantity=1):
    body = {"product_id": product_id, "quantity": quantity, "contact": contact, "query_password": PASSWORD,
            "channel": "sandbox"}
    if coupon is not None:
        body["coupon"] = coupon
    return client.post("/shop/api/orders", json=body)


def notify(client, order_no: str, amount: int, trade_no: str | None = None):
    fields = {"order_no": order_no, "trade_no": trade_no or "T" + secrets.token_hex(8), "amount": str(amount),
              "currency": "CNY", "status": "SUCCESS", "ts": str(int(time.time())), "nonce": secrets.token_hex(8)}
    fields["sign"] = sandbox.sign(KEY, fields)
    return client.post("/pay/notify/sandbox", data=fields)


def counts(db) -> dict:
    return {"orders": db.session.scalar(select(func.count()).select_from(Order)),
            "checkouts": db.session.scalar(select(func.count()).select_from(OrderCheckout)),
            "redemptions": db.session.scalar(select(func.count()).select_from(CouponRedemption)),
            "used": db.session.scalar(select(func.coalesce(func.sum(Coupon.used_count), 0))),
            "journals": db.session.scalar(select(func.count()).select_from(Journal))}


# --- maths -----------------------------------------------------------------------------------------------------

def test_discount_maths(app, db):
    fixed = Coupon(kind="fixed", value=500)
    assert coupons.discount_for(fixed, 10000) == 500
    assert coupons.discount_for(fixed, 500) == 499  # never below 1 fen to pay
    assert coupons.discount_for(fixed, 1) == 0
    pct = Coupon(kind="percent", value=1550)  # 15.50% off
    assert coupons.discount_for(pct, 999) == 154  # 154.845 floored once
    assert coupons.discount_for(pct, 10000) == 1550
    assert coupons.discount_for(Coupon(kind="percent", value=9999), 3) == 2  # floor(2.9997) = 2, leaves 1 fen
    assert coupons.discount_for(Coupon(kind="percent", value=9999), 1) == 0


def test_min_spend_and_window_edges(app, db):
    now = utcnow()
    c = make_coupon(db, "EDGE", min_spend=10000, starts_at=now, ends_at=now + timedelta(hours=1))
    q = coupons.quote("edge", 10000, "contact:a", now=now)  # code case-insensitive via normalize at checkout
    assert (q.discount, q.amount) == (500, 9500)
    with pytest.raises(KamengError) as e:
        coupons.quote("EDGE", 9999, "contact:a", now=now)
    assert e.value.code == "coupon_min_spend"
    with pytest.raises(KamengError) as e:
        coupons.quote("EDGE", 10000, "contact:a", now=now - timedelta(microseconds=1))
    assert e.value.code == "coupon_invalid"  # not yet valid
    assert coupons.quote("EDGE", 10000, "contact:a", now=c.ends_at - timedelta(microseconds=1)).discount == 500
    with pytest.raises(KamengError) as e:
        coupons.quote("EDGE", 10000, "contact:a", now=c.ends_at)  # ends_at is exclusive
    assert e.value.code == "coupon_expired"
    c.active = False
    db.session.commit()
    with pytest.raises(KamengError) as e:
        coupons.quote("EDGE", 10000, "contact:a", now=now)
    assert e.value.code == "coupon_invalid"
    with pytest.raises(KamengError) as e:
        coupons.quote("NOPE", 10000, "contact:a")
    assert e.value.code == "coupon_invalid"


def test_definition_checks(app, db):
    from app.errors import ValidationError

    for kind, value in (("fixed", 0), ("percent", 10000), ("percent", 0), ("bogus", 10)):
        with pytest.raises(ValidationError):
            coupons.create_coupon("X1", "x", kind, value)
        db.session.rollback()
    with pytest.raises(ValidationError):
        coupons.create_coupon("X2", "x", "fixed", 10, starts_at=utcnow(), ends_at=utcnow() - timedelta(seconds=1))


# --- storefront checkout ---------------------------------------------------------------------------------------

def test_checkout_with_coupon_paid_by_sandbox_at_discounted_amount(app, db, f, client):
    setup_sandbox()
    p = f.product(face_price=10000, cost=8000, secrets=3)
    make_coupon(db, "PCT15", kind="percent", value=1550, min_spend=5000)
    r = create_order(client, p.id, coupon=" pct15 ", quantity=1)
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    assert data["amount"] == 10000 - 1550 and data["discount"] == 1550
    order = db.session.scalar(select(Order).where(Order.order_no == data["order_no"]))
    assert (order.amount, order.discount, order.unit_price, order.coupon.code if False else order.coupon_id) == \
        (8450, 1550, 10000, db.session.scalar(select(Coupon.id).where(Coupon.code == "PCT15")))
    red = db.session.scalar(select(CouponRedemption).where(CouponRedemption.order_id == order.id))
    # counted by the blind index of the normalised (E.164) contact, never the contact itself
    assert (red.redeemer, red.discount) == ("contact:" + pii_hash("+8613800000000"), 1550)
    assert red.redeemer == "contact:" + pii_hash("138 0000 0000")
    assert db.session.scalar(select(Coupon.used_count).where(Coupon.code == "PCT15")) == 1

    # The undiscounted amount is a mismatch; the discounted one pays and delivers.
    assert notify(client, order.order_no, 10000).status_code == 400
    r = notify(client, order.order_no, 8450)
    assert r.status_code == 200 and r.data == b"success"
    db.session.expire_all()
    assert order.status == "delivered"
    from app.ledger.service import balance_of

    assert balance_of("platform:revenue") == 8450 - 8000  # revenue absorbs the discount
    lookup = client.post("/shop/api/lookup", json={"order_no": order.order_no, "query_password": PASSWORD})
    assert lookup.get_json()["discount"] == 1550 and len(lookup.get_json()["card_secrets"]) == 1


def test_discount_larger_than_margin_still_balances(app, db, f, client):
    setup_sandbox()
    p = f.product(face_price=10000, cost=9000, secrets=1)
    make_coupon(db, "BIG", value=3000)
    data = create_order(client, p.id, coupon="BIG").get_json()
    assert notify(client, data["order_no"], 7000).data == b"success"
    from app.ledger.service import balance_of

    assert balance_of("platform:revenue") == -2000  # negative margin is fine; the journal balances


@pytest.mark.parametrize("setup,code,status", [
    (lambda db: None, "coupon_invalid", 400),
    (lambda db: make_coupon(db, "BAD", active=False), "coupon_invalid", 400),
    (lambda db: make_coupon(db, "BAD", starts_at=utcnow() - timedelta(days=2), ends_at=utcnow()
                            - timedelta(seconds=1)), "coupon_expired", 400),
    (lambda db: make_coupon(db, "BAD", min_spend=20001), "coupon_min_spend", 400),
    (lambda db: make_coupon(db, "BAD", total_limit=1, per_user_limit=5) and _use_up(db), "coupon_used_up", 409),
])
def test_bad_coupon_is_4xx_and_writes_nothing(app, db, f, client, setup, code, status):
    setup_sandbox()
    p = f.product(face_price=10000, secrets=5)
    setup(db)
    before = counts(db)
    r = create_order(client, p.id, coupon="BAD", quantity=2)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["error"]["code"] == code
    assert counts(db) == before


def _use_up(db):
    c = db.session.scalar(select(Coupon).where(Coupon.code == "BAD"))
    c.used_count = c.total_limit
    db.session.commit()
    return c


def test_coupon_field_of_wrong_type_is_400(app, db, f, client):
    setup_sandbox()
    p = f.product(secrets=1)
    before = counts(db)
    r = create_order(client, p.id, coupon=12)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "coupon_invalid"
    assert counts(db) == before
    assert create_order(client, p.id, coupon="").status_code == 201  # blank: no coupon


def test_per_user_and_total_limits_through_the_api(app, db, f, client):
    setup_sandbox()
    p = f.product(secrets=5)
    make_coupon(db, "TWICE", per_user_limit=2, total_limit=3)
    assert create_order(client, p.id, "TWICE", contact="a@x.cn").status_code == 201
    assert create_order(client, p.id, "TWICE", contact=" A@X.cn ").status_code == 201  # same person
    r = create_order(client, p.id, "TWICE", contact="a@x.cn")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "coupon_used_up"
    assert create_order(client, p.id, "TWICE", contact="b@x.cn").status_code == 201
    r = create_order(client, p.id, "TWICE", contact="c@x.cn")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "coupon_used_up"
    assert db.session.scalar(select(Coupon.used_count).where(Coupon.code == "TWICE")) == 3


def test_closed_unpaid_order_gives_the_use_back_refunded_does_not(app, db, f, client):
    setup_sandbox()
    p = f.product(secrets=5)
    make_coupon(db, "ONCE", per_user_limit=1, total_limit=5)
    first = create_order(client, p.id, "ONCE").get_json()
    assert create_order(client, p.id, "ONCE").status_code == 409
    db.session.execute(OrderCheckout.__table__.update().values(expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    assert payments.expire_unpaid() == 1
    assert db.session.scalar(select(Order.status).where(Order.order_no == first["order_no"])) == "closed"
    assert db.session.scalar(select(Coupon.used_count).where(Coupon.code == "ONCE")) == 0
    assert db.session.scalar(select(func.count()).select_from(CouponRedemption)) == 0
    second = create_order(client, p.id, "ONCE").get_json()  # usable again
    assert notify(client, second["order_no"], second["amount"]).data == b"success"
    order = db.session.scalar(select(Order).where(Order.order_no == second["order_no"]))
    payments.refund_order(order.id, "buyer asked", None)
    assert db.session.scalar(select(Coupon.used_count).where(Coupon.code == "ONCE")) == 1
    assert create_order(client, p.id, "ONCE").status_code == 409


# --- wallet orders ---------------------------------------------------------------------------------------------

def test_wallet_order_with_coupon(app, db, f):
    a = f.agent(balance=20000, tier_obj=f.tier(discount_bp=9000))
    p = f.product(face_price=10000, cost=8000, secrets=3)
    make_coupon(db, "AGENT", value=1000, min_spend=9000)
    order = orders.place_wallet_order(a.id, p.id, 1, coupon="agent")
    assert (order.amount, order.discount) == (8000, 1000)
    assert f.wallet(a) == 12000
    assert db.session.scalar(select(CouponRedemption.redeemer)) == f"agent:{a.id}"
    with pytest.raises(KamengError) as e:
        orders.place_wallet_order(a.id, p.id, 1, coupon="AGENT")
    assert e.value.code == "coupon_used_up"
    assert f.wallet(a) == 12000


# --- races on PostgreSQL ---------------------------------------------------------------------------------------

def _race(app, n, target):
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                results[i] = ("ok", target(i))
            except KamengError as exc:
                results[i] = (exc.code, None)
            except Exception as exc:  # noqa: BLE001
                results[i] = ("crash", repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not [r for r in results if r[0] == "crash"], results
    return results


def test_race_cannot_exceed_total_limit(app, db, f):
    setup_sandbox()
    p = f.product(secrets=1)
    make_coupon(db, "RUSH", total_limit=3, per_user_limit=1)
    pid = p.id

    def buy(i):
        return payments.checkout(pid, 1, f"buyer{i}@x.cn", PASSWORD, "sandbox", "http://t", coupon="RUSH")[0].id

    results = _race(app, 12, buy)
    assert sorted(r[0] for r in results) == ["coupon_used_up"] * 9 + ["ok"] * 3
    db.session.expire_all()
    assert db.session.scalar(select(Coupon.used_count).where(Coupon.code == "RUSH")) == 3
    assert db.session.scalar(select(func.count()).select_from(CouponRedemption)) == 3
    assert db.session.scalar(select(func.count()).select_from(Order)) == 3


def test_race_cannot_exceed_per_user_limit(app, db, f):
    setup_sandbox()
    p = f.product(secrets=1)
    make_coupon(db, "MINE", per_user_limit=2)
    pid = p.id

    def buy(i):
        return payments.checkout(pid, 1, "same@x.cn", PASSWORD, "sandbox", "http://t", coupon="MINE")[0].id

    results = _race(app, 10, buy)
    assert sorted(r[0] for r in results) == ["coupon_used_up"] * 8 + ["ok"] * 2
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(CouponRedemption)) == 2
    assert db.session.scalar(select(Coupon.used_count).where(Coupon.code == "MINE")) == 2


# --- admin screen ----------------------------------------------------------------------------------------------

def test_admin_creates_and_edits_coupons_in_yuan_and_percent(app, db, f, client):
    admin = f.user(role="Admin")
    f.login(client, admin.username)
    form = {"code": "yuan5", "name": "五元券", "kind": "fixed", "value_fixed": "5.5", "value_percent": "",
            "min_spend": "50", "starts_at": "2020-01-01 00:00:00", "ends_at": "2099-01-01 00:00:00",
            "per_user_limit": "1", "total_limit": "", "active": "y"}
    r = client.post("/coupons/add", data=form)
    assert r.status_code == 302, r.data.decode()[:2000]
    c = db.session.scalar(select(Coupon).where(Coupon.code == "YUAN5"))
    assert (c.kind, c.value, c.min_spend, c.total_limit, c.used_count) == ("fixed", 550, 5000, None, 0)
    assert db.session.scalar(select(AuditEntry).where(AuditEntry.action == "coupon.create")) is not None

    r = client.post(f"/coupons/edit/{c.id}", data={**form, "kind": "percent", "value_percent": "12.5",
                                                   "value_fixed": ""})
    assert r.status_code == 302
    db.session.expire_all()
    assert (c.kind, c.value) == ("percent", 1250)
    assert db.session.scalar(select(AuditEntry).where(AuditEntry.action == "coupon.update")) is not None
    page = client.get(f"/coupons/edit/{c.id}").data.decode()
    assert "12.50" in page
    assert "12.50%" in client.get("/coupons/list/").data.decode()

    # a percent coupon without its percentage is refused and nothing changes
    r = client.post("/coupons/add", data={**form, "code": "NOPCT", "kind": "percent", "value_fixed": ""})
    assert db.session.scalar(select(Coupon).where(Coupon.code == "NOPCT")) is None


def test_per_buyer_limit_counts_a_normalised_contact_and_the_device(app, db, f, client):
    """One use per buyer: the same phone written another way, or another contact typed on the same device, is the
    same buyer; a different buyer on a different device still gets the coupon."""
    setup_sandbox()
    p = f.product(face_price=10000, cost=8000, secrets=5)
    make_coupon(db, "ONCE", value=500)  # per_user_limit 1

    def checkout(contact, device=None):
        body = {"product_id": p.id, "quantity": 1, "contact": contact, "query_password": "pass-123456",
                "channel": "sandbox", "coupon": "ONCE"}
        if device is not None:
            body["device_id"] = device
        return client.post("/shop/api/orders", json=body)

    assert checkout("138 0013 8000", device="fp-aaaa").status_code == 201
    for contact, device in (("+86 138-0013-8000", None), ("13800138000", "fp-bbbb"), ("qq:12345", "fp-aaaa")):
        r = checkout(contact, device)
        assert r.status_code == 409 and r.get_json()["error"]["code"] == "coupon_used_up", (contact, device)
    assert checkout("13900139000", device="fp-cccc").status_code == 201
    assert db.session.scalar(select(func.count()).select_from(CouponRedemption)) == 2
    # a device id that is not a short string is refused, and nothing is written
    r = client.post("/shop/api/orders", json={"product_id": p.id, "quantity": 1, "contact": "13700137000",
                                              "query_password": "pass-123456", "channel": "sandbox",
                                              "device_id": "x" * 129})
    assert r.status_code == 400 and db.session.scalar(select(func.count()).select_from(Order)) == 2

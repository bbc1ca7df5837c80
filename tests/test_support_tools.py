"""Support tools through their pages: 客服查单 finds orders by a phone, contact or top-up account in any spelling
through the blind indexes (results masked, the value never in a URL); 批量补偿 previews the orders an incident hit
and issues one coupon per buyer, once, audited, bound to that buyer; the buyer finds it (storefront lookup, agent
home) and only that buyer can use it. Roles and CSRF are checked on the way."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.audit.models import AuditEntry
from app.clock import to_local, utcnow
from app.extensions import db
from app.orders import service as orders
from app.orders.models import Order
from app.payments import coupons
from app.payments.models import Coupon
from app.support.models import CompensationBatch, CompensationOrder
from tests.dashboards_helpers import agent_client, login_as
from tests.payments_helpers import guest_order, notify, setup_sandbox, trade_no

PHONE = "13800138000"


def paid_guest_order(client, product, contact: str) -> Order:
    """A storefront order paid through the sandbox channel's signed notification (delivered: a card product)."""
    order = guest_order(product, "sandbox", contact=contact)
    assert notify(client, "sandbox", order, trade_no()).status_code == 200
    db.session.rollback()
    return db.session.get(Order, order.id)


@pytest.fixture
def shop(app, f):
    setup_sandbox()
    db.session.commit()
    return f.product(face_price=2000, cost=1500, secrets=30, name=f.unique("点卡"))


# --- 客服查单 ----------------------------------------------------------------------------------------------------

def test_search_by_phone_contact_or_account_in_any_spelling(app, client, f, shop):
    guest = paid_guest_order(client, shop, "+86 138-0013-8000")
    other = paid_guest_order(client, shop, "13900000000")
    buyer = f.agent(balance=100_000)
    buyer.phone = "138 0013 8000"  # an agent whose own phone it is: its orders too
    db.session.commit()
    own = orders.place_wallet_order(buyer.id, shop.id, 1)
    qq = paid_guest_order(client, shop, "QQ 12345678")
    support, _ = login_as(app, f, "Support")

    page = support.post("/support-search/", data={"q": PHONE})
    assert page.status_code == 200
    found = re.findall(r'data-order-no="(\d+)"', page.text)
    assert set(found) == {guest.order_no, own.order_no} and other.order_no not in page.text
    assert PHONE not in page.text and "+86 138-0013-8000" not in page.text  # masked, the query too
    assert "1*********0" in page.text  # app.crypto.mask: a quarter shown
    assert "买家联系方式" in page.text and "代理手机号" in page.text and buyer.name in page.text

    assert re.findall(r'data-order-no="(\d+)"', support.post("/support-search/", data={"q": "qq12345678"}).text) \
        == [qq.order_no]
    by_no = support.post("/support-search/", data={"q": other.order_no})
    assert re.findall(r'data-order-no="(\d+)"', by_no.text) == [other.order_no]
    assert "订单号" in by_no.text

    # Bad input is a message, never a 500; a GET shows the empty form; the value never travels in a URL.
    assert support.post("/support-search/", data={"q": "   "}).status_code == 400
    assert support.post("/support-search/", data={"q": "1" * 65}).status_code == 400
    blank = support.get("/support-search/?q=" + PHONE)
    assert blank.status_code == 200 and 'data-order-no' not in blank.text and 'method="post"' in blank.text


def test_search_finds_a_top_up_by_its_account(app, client, f, shop):
    from app.suppliers.models import SupplierProduct

    buyer = f.agent(balance=100_000)
    direct = f.product(kind="direct", face_price=1000, cost=900, name=f.unique("话费"))
    db.session.add(SupplierProduct(supplier_id=direct.supplier_id, product_id=direct.id, upstream_code="X",
                                   cost=900, active=True))
    db.session.commit()
    o = Order(order_no=orders.new_order_no(), agent_id=buyer.id, product_id=direct.id, supplier_id=direct.supplier_id,
              quantity=1, face_price=1000, unit_price=950, amount=950, cost_total=900, status="failed",
              account="138 0013 8000", channel="wallet")
    db.session.add(o)
    db.session.commit()
    support, _ = login_as(app, f, "Support")
    page = support.post("/support-search/", data={"q": "+8613800138000"})
    assert re.findall(r'data-order-no="(\d+)"', page.text) == [o.order_no] and "充值账号" in page.text


def test_search_is_for_support_and_manager_with_csrf(app, client, f, shop):
    paid_guest_order(client, shop, PHONE)
    for role, expected in (("Manager", 200), ("Finance", 403)):
        c, _ = login_as(app, f, role)
        assert c.post("/support-search/", data={"q": PHONE}).status_code == expected, role
    agent = f.agent()
    assert agent_client(app, f, agent).post("/support-search/", data={"q": PHONE}).status_code == 403
    support, _ = login_as(app, f, "Support")
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        assert support.post("/support-search/", data={"q": PHONE}).status_code == 400  # no token
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


# --- 批量补偿 ----------------------------------------------------------------------------------------------------

def window(minutes_before: int = 60, minutes_after: int = 5) -> dict:
    now = to_local(utcnow())
    return {"start": (now - timedelta(minutes=minutes_before)).strftime("%Y-%m-%dT%H:%M"),
            "end": (now + timedelta(minutes=minutes_after)).strftime("%Y-%m-%dT%H:%M")}


def criteria(product, **extra) -> dict:
    return {**window(), "product_id": str(product.id), "status": ["delivered", "refunded"], **extra}


@pytest.fixture
def incident(app, client, f, shop):
    """Orders of `shop` (the incident's product): guest A twice (two spellings of one phone), guest B, agent C;
    an order of another product, and one of A's from before the window."""
    a1 = paid_guest_order(client, shop, PHONE)
    a2 = paid_guest_order(client, shop, "+86 138 0013 8000")
    b = paid_guest_order(client, shop, "13900000000")
    c = f.agent(balance=100_000)
    c_order = orders.place_wallet_order(c.id, shop.id, 1)
    elsewhere = paid_guest_order(client, f.product(secrets=2), "13700000000")
    early = paid_guest_order(client, shop, PHONE)
    db.session.execute(update(Order).where(Order.id == early.id).values(created_at=utcnow() - timedelta(days=2)))
    db.session.commit()
    return {"a": (a1, a2), "b": b, "c": c, "c_order": c_order, "elsewhere": elsewhere, "early": early}


def preview(client, data) -> tuple[int, dict]:
    r = client.post("/compensation/preview", data=data)
    values = {k: int(v) for k, v in re.findall(r'id="preview-(\w+)">(\d+)<', r.text)}
    token = re.search(r'name="token" value="(\w+)"', r.text)
    values["token"] = token.group(1) if token else None
    return r.status_code, values


def test_bulk_compensation_previews_then_issues_one_coupon_per_buyer(app, client, f, shop, incident):
    support, user = login_as(app, f, "Support")
    status, plan = preview(support, criteria(shop))
    assert status == 200
    assert (plan["matched"], plan["already"], plan["unidentified"], plan["orders"], plan["buyers"]) == (4, 0, 0, 4, 3)
    assert db.session.scalar(select(func.count()).select_from(CompensationBatch)) == 0  # a preview writes nothing

    form = {**criteria(shop), "token": plan["token"], "expect_orders": "4", "expect_buyers": "3",
            "amount": "5.00", "valid_days": "14", "reason": "上游故障补偿"}
    r = support.post("/compensation/issue", data=form)
    assert r.status_code == 302
    db.session.rollback()
    batch = db.session.scalar(select(CompensationBatch))
    assert (batch.orders, batch.buyers, batch.amount, batch.total, batch.created_by_id) == (4, 3, 500, 1500, user.id)
    issued = {c.owner: c for c in db.session.scalars(select(Coupon).where(Coupon.owner.is_not(None)))}
    a1, a2 = incident["a"]
    assert set(issued) == {f"contact:{a1.contact_hash}", f"contact:{incident['b'].contact_hash}",
                           f"agent:{incident['c'].id}"}
    for c in issued.values():
        assert (c.kind, c.value, c.per_user_limit, c.total_limit) == ("fixed", 500, 1, 1)
        assert timedelta(days=13, hours=23) < c.ends_at - c.starts_at <= timedelta(days=14)
    compensated = dict(db.session.execute(select(CompensationOrder.order_id, CompensationOrder.coupon_id)).all())
    assert set(compensated) == {a1.id, a2.id, incident["b"].id, incident["c_order"].id}
    assert compensated[a1.id] == compensated[a2.id]  # one buyer, one coupon
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "compensation.issue"))
    assert entry.actor_id == user.id and entry.reason == "上游故障补偿" and '"buyers": 3' in entry.new_value
    from app.chain import service as chain
    assert "compensation.issue" in chain.MONEY_ACTIONS

    # The same preview submitted again issues nothing more; a new window over the same orders skips them.
    assert support.post("/compensation/issue", data=form).status_code == 302
    assert db.session.scalar(select(func.count()).select_from(CompensationBatch)) == 1
    assert db.session.scalar(select(func.count()).select_from(Coupon).where(Coupon.owner.is_not(None))) == 3
    _, again = preview(support, criteria(shop))
    assert (again["matched"], again["already"], again["orders"], again["buyers"]) == (4, 4, 0, 0)

    # The batch's page lists its orders and coupons.
    show = support.get(f"/compensation-batches/show/{batch.id}")
    assert show.status_code == 200 and incident["b"].order_no in show.text


def test_a_compensation_coupon_is_the_buyers_alone(app, client, f, shop, incident):
    support, user = login_as(app, f, "Support")
    _, plan = preview(support, criteria(shop))
    support.post("/compensation/issue", data={**criteria(shop), "token": plan["token"], "expect_orders": "4",
                                              "expect_buyers": "3", "amount": "3", "valid_days": "30",
                                              "reason": "补偿"})
    db.session.rollback()
    a1, _ = incident["a"]
    code = db.session.scalar(select(Coupon.code).where(Coupon.owner == f"contact:{a1.contact_hash}"))
    # The storefront lookup (after the order password) shows it to the buyer ...
    r = client.post("/shop/api/lookup", json={"order_no": a1.order_no, "query_password": "order-pass-123"})
    assert r.status_code == 200 and [c["code"] for c in r.get_json()["compensation_coupons"]] == [code]
    # ... it takes 3 yuan off this buyer's next order, in any spelling of the phone, and nobody else's.
    quote = coupons.quote(code, 2000, coupons.redeemer_for_contact("+86 13800138000"))
    assert quote.discount == 300
    with pytest.raises(coupons.CouponInvalid):
        coupons.quote(code, 2000, coupons.redeemer_for_contact("13900000000"))
    # The agent finds its own on its home page.
    agent_code = db.session.scalar(select(Coupon.code).where(Coupon.owner == f"agent:{incident['c'].id}"))
    home = agent_client(app, f, incident["c"]).get("/")
    assert agent_code in home.text and code not in home.text


def test_a_changed_selection_must_be_previewed_again(app, client, f, shop, incident):
    support, _ = login_as(app, f, "Support")
    _, plan = preview(support, criteria(shop))
    paid_guest_order(client, shop, "13600000000")  # a new order in the window after the preview
    r = support.post("/compensation/issue", data={**criteria(shop), "token": plan["token"], "expect_orders": "4",
                                                  "expect_buyers": "3", "amount": "5", "valid_days": "30",
                                                  "reason": "补偿"})
    assert r.status_code == 409 and "请重新预览" in r.text
    assert db.session.scalar(select(func.count()).select_from(CompensationBatch)) == 0
    assert db.session.scalar(select(func.count()).select_from(Coupon).where(Coupon.owner.is_not(None))) == 0


@pytest.mark.parametrize("bad, message", [
    ({"start": "yesterday"}, "开始时间格式"),
    ({"status": []}, "至少选择一种订单状态"),
    ({"product_id": "999999"}, "商品不存在"),
    ({"supplier_id": "abc"}, "供应商不存在"),
])
def test_bad_criteria_are_form_errors(app, f, shop, bad, message):
    support, _ = login_as(app, f, "Support")
    r = support.post("/compensation/preview", data={**criteria(shop), **bad})
    assert r.status_code == 400 and message in r.text


def test_bad_issue_input_writes_nothing(app, client, f, shop, incident):
    support, _ = login_as(app, f, "Support")
    _, plan = preview(support, criteria(shop))
    base = {**criteria(shop), "token": plan["token"], "expect_orders": "4", "expect_buyers": "3",
            "valid_days": "30", "reason": "补偿"}
    for bad in ({"amount": "0"}, {"amount": "abc"}, {"amount": "5000"}, {"amount": "5", "reason": ""},
                {"amount": "5", "valid_days": "0"}, {"amount": "5", "token": ""}):
        r = support.post("/compensation/issue", data={**base, **bad})
        assert r.status_code == 400, bad
    assert db.session.scalar(select(func.count()).select_from(CompensationBatch)) == 0


def test_supplier_filter_takes_orders_it_delivered_or_was_sent(app, f):
    from app.catalog import service as catalog
    from app.suppliers.models import RechargeAttempt
    from app.support import compensation

    buyer = f.agent(balance=100_000)
    direct = f.product(kind="direct", face_price=1000, cost=900, name=f.unique("话费"))
    other_supplier = catalog.create_supplier(f.unique("上游"), 0).id
    db.session.commit()
    rows = []  # (bare rows: no money moved, so neither is 'delivered', which the ledger check wants a sale for)
    for status, supplier_id in (("failed", direct.supplier_id), ("refunded", other_supplier)):
        o = Order(order_no=orders.new_order_no(), agent_id=buyer.id, product_id=direct.id, supplier_id=supplier_id,
                  quantity=1, face_price=1000, unit_price=950, amount=950, cost_total=900, status=status,
                  account=PHONE, channel="wallet")
        db.session.add(o)
        rows.append(o)
    db.session.flush()
    # the refunded one went to the incident's supplier first, then failed over elsewhere
    db.session.add(RechargeAttempt(order_id=rows[1].id, supplier_id=direct.supplier_id, seq=1, upstream_code="X",
                                   cost=900, status="failed"))
    db.session.commit()
    c = compensation.Criteria(utcnow() - timedelta(hours=1), utcnow() + timedelta(minutes=1),
                              ("failed", "refunded"), supplier_id=direct.supplier_id)
    assert compensation.preview(c).orders == 2
    c2 = compensation.Criteria(c.start, c.end, c.statuses, supplier_id=other_supplier)
    assert compensation.preview(c2).orders == 1


def test_only_support_issues_and_csrf_is_required(app, client, f, shop, incident):
    manager, _ = login_as(app, f, "Manager")
    page = manager.get("/compensation/")
    assert page.status_code == 200 and "preview-button" not in page.text
    assert manager.post("/compensation/preview", data=criteria(shop)).status_code == 403
    assert manager.post("/compensation/issue", data=criteria(shop)).status_code == 403
    finance, _ = login_as(app, f, "Finance")
    assert finance.get("/compensation/").status_code == 403
    assert agent_client(app, f, incident["c"]).get("/compensation/").status_code == 403
    support, _ = login_as(app, f, "Support")
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        assert support.post("/compensation/preview", data=criteria(shop)).status_code == 400
    finally:
        app.config["WTF_CSRF_ENABLED"] = False

"""Supplier screens through the FAB test client: suppliers with a write-only encrypted secret, mappings of direct
products, the sync action, supplier alerts; the direct order's upstream status and timeline for support; what
agents may not see (suppliers, the jobs page) and what their own order page leaves out (supplier, cost)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app import crypto
from app.audit.models import AuditEntry
from app.catalog.models import Supplier
from app.clock import utcnow
from app.extensions import db
from app.orders.models import Order
from app.orders.service import new_order_no
from app.suppliers.models import RechargeAttempt, RechargeEvent, SupplierAlert, SupplierProduct
from tests import supplier_sim_helpers
from tests.supplier_sim_helpers import sim_supplier

supplier_sim = supplier_sim_helpers.supplier_sim
SECRET = "upstream-secret-Zq81x7Kp"


@pytest.fixture
def admin(app, f):
    return f.login(app.test_client(), f.user(f.unique("admin"), role="Admin").username)


def _supplier_form(**overrides) -> dict:
    form = {"name": "模拟上游A", "service_fee_bp": "1.5", "active": "y", "contact": "张三", "protocol": "simulator",
            "endpoint": "http://127.0.0.1:8703", "app_key": "kameng-demo", "secret": SECRET, "priority": "10",
            "timeout_seconds": "5", "low_balance_threshold": "100.00"}
    form.update(overrides)
    return form


def _supplier(name: str) -> Supplier | None:
    db.session.expire_all()
    return db.session.scalar(select(Supplier).where(Supplier.name == name))


def test_admin_creates_a_supplier_whose_secret_is_encrypted_and_never_shown(app, f, admin):
    r = admin.post("/suppliers/add", data=_supplier_form(), follow_redirects=True)
    assert r.status_code == 200 and SECRET not in r.text
    supplier = _supplier("模拟上游A")
    assert supplier is not None and supplier.protocol == "simulator" and supplier.app_key == "kameng-demo"
    assert (supplier.priority, supplier.timeout_seconds, supplier.low_balance_threshold,
            supplier.service_fee_bp) == (10, 5, 10_000, 150)
    assert SECRET not in supplier.secret_enc and crypto.decrypt(supplier.secret_enc) == SECRET
    for url in ("/suppliers/list/", f"/suppliers/show/{supplier.id}", f"/suppliers/edit/{supplier.id}"):
        page = admin.get(url).text
        assert SECRET not in page and supplier.secret_enc not in page, url
    assert "模拟上游" in admin.get("/suppliers/list/").text  # the protocol in words
    created = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "supplier.create"))
    assert SECRET not in (created.new_value or "") and supplier.secret_enc not in (created.new_value or "")

    # edit with a blank secret keeps it; other fields change
    token = supplier.secret_enc
    r = admin.post(f"/suppliers/edit/{supplier.id}", data=_supplier_form(secret="", priority="20"))
    assert r.status_code == 302
    supplier = _supplier("模拟上游A")
    assert supplier.priority == 20 and supplier.secret_enc == token
    # a new secret replaces it; the audit entry says the secret changed without containing it
    r = admin.post(f"/suppliers/edit/{supplier.id}", data=_supplier_form(secret="another-secret-123"))
    assert r.status_code == 302
    assert crypto.decrypt(_supplier("模拟上游A").secret_enc) == "another-secret-123"
    update = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "supplier.update")
                                .order_by(AuditEntry.id.desc())).first()
    assert '"secret"' in update.new_value and "another-secret-123" not in update.new_value


def test_supplier_form_refuses_a_connection_without_credentials_or_with_a_bad_url(app, f, admin):
    r = admin.post("/suppliers/add", data=_supplier_form(name="缺密钥", secret=""), follow_redirects=True)
    assert "接口密钥" in r.text and _supplier("缺密钥") is None
    r = admin.post("/suppliers/add", data=_supplier_form(name="坏地址", endpoint="not a url"), follow_redirects=True)
    assert "http(s)://" in r.text and _supplier("坏地址") is None
    r = admin.post("/suppliers/add", data=_supplier_form(name="坏超时", timeout_seconds="500"), follow_redirects=True)
    assert _supplier("坏超时") is None
    # without a protocol no credentials are needed (own stock)
    assert admin.post("/suppliers/add", data=_supplier_form(name="自有", protocol="", endpoint="", app_key="",
                                                              secret="")).status_code == 302
    assert _supplier("自有").protocol is None


def test_admin_maps_a_direct_product_and_syncs_from_the_list(app, f, admin, supplier_sim):
    direct = f.product(name="QB10", kind="direct", face_price=1000, cost=950)
    card = f.product(name="点卡", kind="card")
    supplier = sim_supplier(supplier_sim, name="上游S")
    form = {"supplier": str(supplier.id), "product": str(direct.id), "upstream_code": "TENCENT-QB-10",
            "cost": "9.60", "priority": "5", "active": "y"}
    page = admin.get("/supplier-products/add").text
    products = page[page.index('name="product"'):]
    products = products[:products.index("</select>")]
    assert "QB10" in products and "点卡" not in products  # direct products only
    assert admin.post("/supplier-products/add", data=form).status_code == 302
    mapping = db.session.scalar(select(SupplierProduct).where(SupplierProduct.product_id == direct.id))
    assert (mapping.cost, mapping.priority, mapping.upstream_code) == (960, 5, "TENCENT-QB-10")
    # a card product or a second mapping for the same pair is refused
    r = admin.post("/supplier-products/add", data={**form, "product": str(card.id)}, follow_redirects=True)
    assert db.session.scalar(select(SupplierProduct).where(SupplierProduct.product_id == card.id)) is None
    r = admin.post("/supplier-products/add", data=form, follow_redirects=True)
    assert "已有这个商品的映射" in r.text

    r = admin.post("/suppliers/action_post", data={"action": "sync", "rowid": [str(supplier.id)]},
                   follow_redirects=True)
    assert "上游S 已同步" in r.text
    db.session.expire_all()
    assert db.session.get(SupplierProduct, mapping.id).upstream_stock == 500
    page = admin.get("/supplier-products/list/").text
    assert "TENCENT-QB-10" in page and "500" in page and "¥9.60" in page
    assert db.session.scalar(select(AuditEntry).where(AuditEntry.action == "supplier.sync")) is not None


@pytest.fixture
def direct_order(f):
    """A direct order that went to a first supplier (failed), failed over, and sits 处理中 at a second one."""
    agent = f.agent(balance=10_000)
    product = f.product(name="移动话费10元", kind="direct", face_price=1000, cost=950)
    first = Supplier(name="上游甲（内部）", protocol="simulator", priority=1)
    second = Supplier(name="上游乙（内部）", protocol="simulator", priority=2)
    db.session.add_all([first, second])
    db.session.flush()
    order = Order(order_no=new_order_no(), agent_id=agent.id, product_id=product.id, supplier_id=second.id,
                  tier_id=agent.tier_id, quantity=1, face_price=1000, unit_price=950, amount=950, cost_total=0,
                  status="delivering", upstream_status="processing", channel="wallet", account="13800138000")
    db.session.add(order)
    db.session.flush()
    t0 = utcnow() - timedelta(minutes=5)
    a1 = RechargeAttempt(order_id=order.id, supplier_id=first.id, seq=1, upstream_code="CMCC-10", cost=985,
                         status="failed", upstream_trade_no="UP-111", created_at=t0, finished_at=t0,
                         last_error="运营商维护")
    a2 = RechargeAttempt(order_id=order.id, supplier_id=second.id, seq=2, upstream_code="M10", cost=977,
                         status="processing", upstream_trade_no="UP-222", polls=2, created_at=t0,
                         next_poll_at=utcnow() + timedelta(seconds=20))
    db.session.add_all([a1, a2])
    db.session.flush()
    db.session.add_all([
        RechargeEvent(order_id=order.id, attempt_id=a1.id, supplier_id=first.id, source="submit", status="failed",
                      detail="提交失败：运营商维护", created_at=t0),
        RechargeEvent(order_id=order.id, attempt_id=a2.id, supplier_id=second.id, source="failover",
                      detail="改由上游乙充值", created_at=t0 + timedelta(seconds=1)),
        RechargeEvent(order_id=order.id, attempt_id=a2.id, supplier_id=second.id, source="callback",
                      status="processing", detail="回调：处理中", remote_addr="127.0.0.1",
                      created_at=t0 + timedelta(seconds=9)),
    ])
    db.session.commit()
    return {"order": order, "agent": agent, "first": first, "second": second}


def test_support_sees_the_upstream_status_and_timeline_of_a_direct_order(app, f, direct_order):
    order = direct_order["order"]
    support = f.login(app.test_client(), f.user(f.unique("kf"), role="Support").username)
    page = support.get(f"/orders/show/{order.id}").text
    status = page[page.index('id="upstream-status"'):]
    assert status[:status.index("</b>")].endswith("处理中")
    attempts = page[page.index('id="recharge-attempts"'):page.index("</table>", page.index('id="recharge-attempts"'))]
    assert attempts.index("上游甲（内部）") < attempts.index("上游乙（内部）")
    assert "UP-111" in attempts and "UP-222" in attempts and "¥9.85" in attempts and "运营商维护" in attempts
    assert "充值失败" in attempts
    events = page[page.index('id="recharge-events"'):]
    events = events[:events.index("</table>")]
    assert [s for s in ("提交", "切换供应商", "回调") if s in events] == ["提交", "切换供应商", "回调"]
    assert events.index("提交失败") < events.index("改由上游乙充值") < events.index("回调：处理中")
    assert "127.0.0.1" in events

    listing = support.get("/orders/list/").text
    assert "上游状态" in listing and "处理中" in listing
    # support reads suppliers, mappings and alerts (no secret column anywhere), but cannot change them
    assert support.get("/suppliers/list/").status_code == 200
    assert support.get("/supplier-products/list/").status_code == 200
    assert support.get("/supplier-alerts/list/").status_code == 200
    assert support.get("/suppliers/add").status_code in (302, 403)
    assert support.post(f"/suppliers/delete/{direct_order['first'].id}").status_code in (302, 403, 405)
    assert db.session.get(Supplier, direct_order["first"].id) is not None

    # a card order shows no upstream panel
    card = f.product(secrets=1)
    from app.orders import service as orders
    buyer = f.agent(balance=20_000)
    card_order = orders.place_wallet_order(buyer.id, card.id, 1)
    assert 'id="upstream-panel"' not in support.get(f"/orders/show/{card_order.id}").text


def test_agent_sees_buyer_words_only_and_no_supplier_screens(app, f, direct_order):
    order, agent = direct_order["order"], direct_order["agent"]
    client = f.login(app.test_client(), agent.user.username)
    def buyer_status() -> str:
        page = client.get(f"/portal/orders/{order.order_no}").text
        for hidden in ("上游甲（内部）", "上游乙（内部）", "UP-222", "UP-111", "¥9.77", "¥9.85", "CMCC-10",
                       "运营商维护"):
            assert hidden not in page, hidden
        cell = page[page.index('id="order-upstream-status">') + len('id="order-upstream-status">'):]
        return cell[:cell.index("<")]

    assert buyer_status() == "处理中"
    for status, words in (("submitted", "已提交运营商"), ("unknown", "处理中"), ("success", "充值成功")):
        db.session.get(Order, order.id).upstream_status = status
        db.session.commit()
        assert buyer_status() == words, status  # never "结果未知" to a buyer: support sees that
    for url in ("/suppliers/list/", "/supplier-products/list/", "/supplier-alerts/list/", "/jobs/",
                f"/orders/show/{order.id}"):
        assert client.get(url).status_code in (302, 403), url
    db.session.add(SupplierAlert(supplier_id=direct_order["first"].id, value=1, threshold=2))
    db.session.commit()
    assert client.post(f"/suppliers/edit/{direct_order['first'].id}",
                       data={"name": "hacked"}).status_code in (302, 403)
    assert _supplier("hacked") is None


def test_manager_reads_suppliers_mappings_and_alerts(app, f, direct_order):
    manager = f.login(app.test_client(), f.user(f.unique("mgr"), role="Manager").username)
    for url in ("/suppliers/list/", "/supplier-products/list/", "/supplier-alerts/list/",
                f"/suppliers/show/{direct_order['first'].id}"):
        assert manager.get(url).status_code == 200, url
    menu = manager.get("/").text
    assert "货源映射" in menu and "供应商余额提醒" in menu
    assert manager.get("/supplier-products/add").status_code in (302, 403)

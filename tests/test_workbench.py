"""The home pages: each staff role's workbench (工作台: today against yesterday, its own to-do list with counts and
links, delivery times per product and supplier) and the agent's home (balances, today's sales and commission, team,
shop, notices); the delivery-time rollup behind them (fold = rebuild, on PostgreSQL and SQLite); notices (公告)."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.analytics import delivery
from app.audit.models import AuditEntry
from app.clock import business_today, to_local, utcnow
from app.extensions import db
from app.money import format_fen
from app.orders import service as orders
from app.orders.models import Order
from app.payments import service as payments
from app.suppliers import recharge
from app.workbench import service as workbench
from tests import supplier_sim_helpers
from tests.dashboards_helpers import agent_client, login_as
from tests.recharge_helpers import attempts, order, place_api, world
from tests.supplier_sim_helpers import sim_supplier
from tests.test_rollups import assert_rebuild_equal, past

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture


def kpi(page: str, kpi_id: str, cls: str = "today") -> str:
    block = page[page.index(f'id="{kpi_id}"'):]
    return re.search(rf'class="{cls}">(.*?)</', block, re.S).group(1).strip()


def todo_counts(page: str) -> dict[str, int]:
    return {k: int(n) for k, n in re.findall(r'data-key="(\w+)" data-count="(\d+)"', page)}


@pytest.fixture
def day_of_sales(app, client, f, supplier_sim, monkeypatch):
    """Today: two card orders (instant), a top-up delivered 40 s after payment, a top-up that failed (refunded), a
    card order delivered then refunded, and a held order rejected by risk control (not a delivery failure).
    Yesterday: one card order."""
    from app.risk import lists, reviews

    w = world(f)
    card = f.product(face_price=2000, cost=1500, secrets=10, name=f.unique("点卡"))
    buyer = w.buyer.id
    with monkeypatch.context() as m:
        m.setattr("app.orders.service.utcnow", past(1))
        yesterday = orders.place_wallet_order(buyer, card.id, 1)
    instant = [orders.place_wallet_order(buyer, card.id, 1) for _ in range(2)]
    refunded = orders.place_wallet_order(buyer, card.id, 1)
    payments.refund_order(refunded.id, "测试退款", None)

    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", mode="pending", pending_polls=0)  # processing, then success when asked
    slow_no = place_api(client, w)["order_no"]
    db.session.execute(update(Order).where(Order.order_no == slow_no)
                       .values(paid_at=order(slow_no).paid_at - timedelta(seconds=40)))
    db.session.commit()
    assert recharge.poll(attempts(slow_no)[0].id) == "delivered"
    supplier_sim.behave("CMCC-10", mode="fail")
    failed_no = place_api(client, w)["order_no"]
    assert order(failed_no).status == "refunded"

    lists.add("agent", w.buyer.name, "review")
    held = orders.place_wallet_order(buyer, card.id, 1)
    assert held.status == "reviewing"
    reviews.reject(held.order_no, "测试拒绝", None)
    db.session.rollback()
    return {"w": w, "card": card, "supplier": sup, "yesterday": yesterday, "instant": instant,
            "refunded": refunded, "slow": slow_no, "failed": failed_no, "held": held.order_no}


# --- the delivery-time rollup -----------------------------------------------------------------------------------

@BOTH
def test_delivery_times_fold_and_rebuild_alike(app, client, f, day_of_sales):
    today = to_local(order(day_of_sales["slow"]).paid_at).date()
    stats = delivery.platform_stats(today, today)
    # delivered: 2 instant + 1 refunded later (it was delivered) + the 40 s top-up; failed: the top-up; the risk
    # rejection is not a delivery failure
    assert (stats.delivered, stats.failed) == (4, 1)
    assert stats.success_rate_bp == 8000
    assert (stats.p50_ms, stats.p95_ms) == (100, 45_000)  # bucket bounds: ≤ 0.1 s, ≤ 45 s
    assert stats.within_promise == 4 and stats.late == 0
    assert 40_000 <= stats.total_ms < 41_000 + 4 * 100
    per = workbench.delivery_rows(today)
    assert [(r.product, r.stats.delivered, r.stats.failed, r.stats.p95_ms) for r in per][0] == \
        (day_of_sales["w"].product.name, 1, 1, 45_000)
    report = assert_rebuild_equal(today - timedelta(days=1), today)
    assert report["delivery"] > 0
    assert delivery.platform_stats(today, today) == stats


def test_products_dashboard_shows_delivery_times_per_product_and_supplier(app, client, f, day_of_sales):
    from tests.dashboards_helpers import call_callback, filters, kpi_values, outputs

    today = business_today()
    manager, _ = login_as(app, f, "Manager")
    out = outputs(call_callback(manager, "products", "pr-kpis.children", filters(today, today)))
    assert kpi_values(out["pr-kpis.children"])["kpi-delivery-p95"] == "≤ 45 秒"
    rows = {(r["product"], r["supplier"]): r for r in out["pr-delivery.data"]}
    w = day_of_sales["w"]
    top = out["pr-delivery.data"][0]  # slowest p95 first
    assert (top["product"], top["supplier"]) == (w.product.name, day_of_sales["supplier"].name)
    assert (top["delivered"], top["failed"], top["success_rate"], top["p50"], top["p95"], top["late"]) == \
        (1, 1, "50.00%", "≤ 45 秒", "≤ 45 秒", 0)
    card = rows[(day_of_sales["card"].name, day_of_sales["card"].supplier.name)]
    assert (card["delivered"], card["failed"], card["p95"]) == (3, 0, "≤ 0.1 秒")


def test_bucket_bounds_and_percentiles(app):
    assert [delivery.bucket_of(ms) for ms in (0, 100, 101, 60_000, 60_001, 3_600_000, 3_600_001)] == \
        [0, 0, 1, 11, 12, 19, 20]
    s = delivery.stats_from([(0, 50, 0), (11, 45, 45 * 50_000), (17, 5, 5 * 700_000), (-1, 3, 0)],
                            late_after_ms=600_000)
    assert (s.delivered, s.failed, s.p50_ms, s.p95_ms, s.late, s.within_promise) == (100, 3, 100, 60_000, 5, 95)
    assert s.success_rate_bp == 100 * 10_000 // 103
    over = delivery.stats_from([(20, 1, 4_000_000)])
    assert over.overflow_p95 and over.p95_ms is None and over.late == 1
    empty = delivery.stats_from([])
    assert empty.success_rate_bp is None and empty.p50_ms is None


# --- the staff workbench -----------------------------------------------------------------------------------------

def test_each_role_sees_today_against_yesterday(app, client, f, day_of_sales):
    from dashboards.queries import gmv

    today = business_today()
    admin, _ = login_as(app, f, "Admin")
    page = admin.get("/").text  # the workbench is the home page
    assert 'id="workbench"' in page and admin.get("/workbench/").status_code == 200
    figures = gmv.totals(0, today, today)
    assert kpi(page, "kpi-gmv") == format_fen(figures["gmv"])  # exactly the GMV dashboard's figure
    assert kpi(page, "kpi-gmv", "yesterday") == format_fen(day_of_sales["yesterday"].amount)
    assert kpi(page, "kpi-orders") == str(figures["orders"]) == "3"  # 2 instant + the top-up (refund netted)
    assert kpi(page, "kpi-orders", "yesterday") == "1"
    assert kpi(page, "kpi-success") == "80.00%"
    assert kpi(page, "kpi-success", "yesterday") == "100.00%"
    assert '<span class="p50">≤ 0.1 秒</span> / <span class="p95">≤ 45 秒</span>' in page
    assert day_of_sales["w"].product.name in page[page.index('id="delivery-today"'):]

    for role, money in (("Manager", True), ("Finance", True), ("Support", False)):
        c, _ = login_as(app, f, role)
        text = c.get("/").text
        assert 'id="kpi-orders"' in text and ('id="kpi-gmv"' in text) is money, role
    agent_page = agent_client(app, f, day_of_sales["w"].buyer).get("/workbench/")
    assert agent_page.status_code == 403


def bare_order(product, status: str, **values) -> Order:
    """An order row as a queue sees it (no money moved: none of these statuses needs a journal)."""
    o = Order(order_no=orders.new_order_no(), product_id=product.id, supplier_id=product.supplier_id, quantity=1,
              face_price=1000, unit_price=1000, amount=1000, cost_total=800, status=status, channel="wallet",
              **values)
    db.session.add(o)
    db.session.flush()
    return o


@pytest.fixture
def queues(app, f):
    """Work waiting in every queue: 2 risk holds, 1 open dispute, 1 overdue top-up, 3 unknown attempts, 1 failed
    delivery notice, 2 withdrawals in review, 1 failed refund, 1 payment alert, 1 low-stock and 1 supplier-balance
    alert, 1 given-up order callback; plus resolved ones that must not count."""
    from app.catalog.models import StockAlert
    from app.network.models import Withdrawal
    from app.notices.models import DeliveryNotice
    from app.outbox.models import OutboxMessage
    from app.payments.models import Dispute, PaymentAlert, Refund
    from app.suppliers.models import RechargeAttempt, SupplierAlert

    card = f.product(secrets=1)
    direct = f.product(kind="direct", face_price=1000, cost=800)
    agent = f.agent()
    for _ in range(2):
        bare_order(card, "reviewing", risk_hold=True, paid_at=utcnow())
    disputed = bare_order(card, "failed")
    db.session.add_all([Dispute(order_id=disputed.id, reason="没收到", status="open"),
                        Dispute(order_id=disputed.id, reason="早先的", status="rejected")])
    overdue = bare_order(direct, "delivering", paid_at=utcnow() - timedelta(minutes=11))
    for status in ("unknown", "unknown", "unknown", "success"):
        o = bare_order(direct, "delivering", paid_at=utcnow())
        db.session.add(RechargeAttempt(order_id=o.id, supplier_id=direct.supplier_id, seq=1, upstream_code="X",
                                       cost=800, status=status))
    db.session.add(DeliveryNotice(order_id=disputed.id, kind="email", recipient="a@b.cn", recipient_masked="a***",
                                  status="failed"))
    db.session.add(DeliveryNotice(order_id=overdue.id, kind="email", recipient="c@d.cn", recipient_masked="c***",
                                  status="sent"))
    for n, status in enumerate(("pending_review", "pending_review", "paid")):
        db.session.add(Withdrawal(withdrawal_no=f"W{n}{utcnow():%H%M%S%f}", agent_id=agent.id, amount=10_000, fee=0,
                                  net_amount=10_000, bank_card_masked="6222****1234",
                                  status=status))
    db.session.add(Refund(order_id=disputed.id, amount=1000, destination="alipay", reason="x", status="failed"))
    db.session.add_all([PaymentAlert(kind="refund_failed", message="x"),
                        PaymentAlert(kind="refund_failed", message="y", resolved_at=utcnow())])
    db.session.add_all([StockAlert(product_id=card.id, available=1, threshold=5),
                        StockAlert(product_id=card.id, available=1, threshold=5, resolved_at=utcnow())])
    db.session.add(SupplierAlert(supplier_id=direct.supplier_id, value=10, threshold=100))
    db.session.add_all([OutboxMessage(topic="order_callback", key="cb-1", payload="{}", status="failed"),
                        OutboxMessage(topic="order_callback", key="cb-2", payload="{}", status="done"),
                        OutboxMessage(topic="notice", key="n-1", payload="{}", status="failed")])
    db.session.commit()
    return {"risk_reviews": 2, "disputes": 1, "sla_overdue": 1, "unknown_topups": 3, "failed_notices": 1,
            "withdrawals": 2, "refunds_failed": 1, "payment_alerts": 1, "low_stock": 1, "supplier_balance": 1,
            "failed_callbacks": 1}


ROLE_QUEUES = {
    "Admin": None,  # every queue
    "Manager": None,  # every queue, read-only screens
    "Finance": {"withdrawals", "refunds_failed", "payment_alerts"},
    "Support": {"risk_reviews", "disputes", "sla_overdue", "unknown_topups", "failed_notices"},
}


@pytest.mark.parametrize("role", list(ROLE_QUEUES))
def test_each_role_has_its_own_to_do_list_with_counts(app, f, queues, role):
    client, _ = login_as(app, f, role)
    page = client.get("/").text
    expected = ROLE_QUEUES[role] or set(queues)
    assert todo_counts(page) == {k: queues[k] for k in expected}
    # every item opens for that role
    for url in re.findall(r'class="list-group-item todo-item[^"]*" href="([^"]+)"', page):
        assert client.get(url.replace("&amp;", "&")).status_code == 200, (role, url)


def test_a_queue_the_role_cannot_open_is_not_listed(app, f, queues):
    from flask import g

    from app.workbench.service import todo

    never = lambda permission, view: view != "DisputeQueueView"  # noqa: E731
    with app.test_request_context():
        g.user = None
        keys = [i.key for i in todo({"Support"}, never)]
    assert "disputes" not in keys and "risk_reviews" in keys


# --- the agent's home --------------------------------------------------------------------------------------------

def test_agent_home_shows_its_own_day_team_shop_and_notices(app, f, monkeypatch):
    from app.announcements.models import Announcement
    from app.network.models import Withdrawal

    top = f.tier(discount_bp=9000, direct_commission_bp=500, rank=1)
    low = f.tier(discount_bp=9500, rank=2)
    parent = f.agent(tier_obj=top, balance=100_000)
    child = f.agent(parent=parent, tier_obj=low, balance=100_000)
    stranger = f.agent(tier_obj=low, balance=100_000)
    card = f.product(face_price=10_000, cost=8_000, secrets=10)
    orders.place_wallet_order(child.id, card.id, 2)  # 2 × 9500: parent earns 5% = 950
    orders.place_wallet_order(parent.id, card.id, 1)  # 9000
    orders.place_wallet_order(stranger.id, card.id, 1)  # another branch
    with monkeypatch.context() as m:
        m.setattr("app.orders.service.utcnow", past(1))
        before = orders.place_wallet_order(child.id, card.id, 1)  # yesterday: 9500
    from app.ledger.models import Journal, Posting
    journals = select(Journal.id).where(Journal.order_id == before.id).scalar_subquery()
    db.session.execute(update(Journal).where(Journal.order_id == before.id)  # its commission, yesterday too
                       .values(created_at=utcnow() - timedelta(days=1)))
    db.session.execute(update(Posting).where(Posting.journal_id.in_(journals))
                       .values(created_at=utcnow() - timedelta(days=1)))
    db.session.add_all([Announcement(title="春节发货安排", body="<b>假期</b>照常发货", audience="agents"),
                        Announcement(title="员工内部通知", body="x", audience="staff"),
                        Announcement(title="已过期", body="x", audience="all", ends_at=utcnow() - timedelta(hours=1))])
    db.session.add(Withdrawal(withdrawal_no="W-home-1", agent_id=parent.id, amount=10_000, fee=0,
                              net_amount=10_000, bank_card_masked="6222****1234",
                              status="pending_review"))
    db.session.commit()
    monkeypatch.setattr(workbench, "_SHOP_LINKS", [])  # the registry is the process's: this test's provider only
    parent_id = parent.id
    workbench.register_shop_link(lambda a: ("我的分站 /s/demo/", "/s/demo/") if a.id == parent_id else None)

    page = agent_client(app, f, parent).get("/")
    assert page.status_code == 200
    text = page.text

    def value(el_id: str) -> str:
        return re.search(rf'id="{el_id}">(.*?)<', text).group(1)

    assert value("team-gmv-today") == format_fen(19_000 + 9_000)  # its branch, not the stranger's
    assert value("team-orders-today") == "2"
    assert value("own-orders-today") == "1"
    assert value("commission-today") == format_fen(950)
    assert value("team-size") == "1" and value("team-new-today") == "1"
    assert "春节发货安排" in text and "员工内部通知" not in text and "已过期" not in text
    assert "&lt;b&gt;假期&lt;/b&gt;" in text  # plain text, never HTML
    assert 'id="shop-link" href="/s/demo/"' in text and 'id="withdrawals-in-review"' in text
    assert agent_client(app, f, child).get("/").text.count('id="shop-link"') == 0
    staff, _ = login_as(app, f, "Support")
    assert "员工内部通知" in staff.get("/").text


# --- notices (公告) -------------------------------------------------------------------------------------------------

def test_admin_posts_notices_manager_reads_them(app, f):
    admin, user = login_as(app, f, "Admin")
    form = {"title": "维护通知", "body": "今晚 2 点维护", "audience": "agents", "starts_at": "2026-01-01 00:00:00",
            "ends_at": "", "active": "y"}
    r = admin.post("/announcements/add", data=form)
    assert r.status_code == 302
    from app.announcements.models import Announcement
    db.session.rollback()
    item = db.session.scalar(select(Announcement))
    assert (item.title, item.audience, item.ends_at) == ("维护通知", "agents", None)
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "announcement.create"))
    assert entry is not None and entry.actor_id == user.id
    bad = admin.post("/announcements/add", data={**form, "title": "错误", "ends_at": "2025-01-01 00:00:00"},
                     follow_redirects=True)
    assert "结束时间必须晚于开始时间" in bad.text
    assert db.session.scalar(select(Announcement).where(Announcement.title == "错误")) is None
    manager, _ = login_as(app, f, "Manager")
    assert manager.get("/announcements/list/").status_code == 200
    assert manager.post("/announcements/add", data={**form, "title": "经理"}).status_code in (302, 403)
    db.session.rollback()
    assert db.session.scalar(select(Announcement).where(Announcement.title == "经理")) is None

"""Agent shops (分站) over HTTP: a shop's catalogue at its markup prices (shaped exactly like the storefront's), a
checkout paid through the sandbox that credits exactly shop price - tier price to the agent's pending account with
upline commissions on the tier price, refunds reversing both (also once settled: the receivable rule), a dispute
freezing the profit, the markup bounds and the never-below-own-price rule as form errors, custom domains served only
once approved (421 for any other host in production), a suspended shop refusing checkout, each agent seeing only
its own shop's orders, the CLI, the materials, the rollups and the GMV dashboard. The ledger check runs after
each money-moving step (and after every test, in the `app` fixture)."""
from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
import requests
from PIL import Image
from sqlalchemy import func, select

from app.agentshops import materials
from app.agentshops import service as shops
from app.agentshops.models import AgentShop, AgentShopDomain, AgentShopMaterial, AgentShopProduct
from app.audit.models import AuditEntry
from app.clock import utcnow
from app.extensions import db as _db
from app.ledger import service as ledger
from app.ledger.invariants import check_ledger
from app.ledger.models import Journal
from app.money import apply_rate
from app.network import commissions, settlement
from app.network.models import Commission
from app.orders.models import Order
from app.payments import service as payments
from app.settings import service as settings
from tests import payments_helpers as h
from tests.conftest import make_app
from tests.openapi_helpers import assert_error, served

PASSWORD = "shop-pass-123"
FACE, COST = 10_000, 8_000
SELLER_BP, MID_DIRECT_BP, ROOT_INDIRECT_BP = 9_000, 300, 100  # seller's discount, mid's and root's rates
MARKUP_BP = 1_000  # 10 %


@pytest.fixture
def world(app, f):
    """root (indirect 1 %) -> mid (direct 3 %) -> seller (tier price 90 %, may open a shop, T+1) with a shop at
    10 % markup; a card product of face ¥100.00 with stock; the sandbox channel."""
    shops.forget_hosts()
    h.setup_sandbox()
    root = f.agent(tier_obj=f.tier(indirect_commission_bp=ROOT_INDIRECT_BP, direct_commission_bp=500))
    mid = f.agent(parent=root, tier_obj=f.tier(direct_commission_bp=MID_DIRECT_BP, indirect_commission_bp=50))
    seller_tier = f.tier(discount_bp=SELLER_BP, settle_days=1)
    seller_tier.may_open_shop = True
    _db.session.commit()
    seller = f.agent(parent=mid, tier_obj=seller_tier)
    product = f.product(name="测试点卡 100元", face_price=FACE, cost=COST, secrets=5)
    shop = shops.open_shop(seller.id, "小王的点卡店", MARKUP_BP, theme="game", contact="QQ 12345")
    return {"root": root, "mid": mid, "seller": seller, "product": product, "shop": shop, "code": shop.code}


def balances(agent) -> dict[str, int]:
    _db.session.expire_all()
    return ledger.agent_balances(agent.id)


def journal(key: str) -> dict[str, int] | None:
    _db.session.expire_all()
    j = _db.session.scalar(select(Journal).where(Journal.idempotency_key == key))
    if j is None:
        return None
    return {p.account.code: p.amount for p in j.postings} | {"_kind": j.kind}


def checkout(client_or_base, code: str, product, contact: str = "13800138000", **extra):
    body = {"product_id": product.id, "quantity": 1, "contact": contact, "query_password": PASSWORD,
            "channel": "sandbox", **extra}
    if isinstance(client_or_base, str):
        return requests.post(f"{client_or_base}/s/{code}/api/orders", json=body, timeout=30)
    return client_or_base.post(f"/s/{code}/api/orders", json=body)


def pay(client_or_base, order_no: str, amount: int):
    form = h.sandbox_form(order_no, h.trade_no("SBX"), amount)
    if isinstance(client_or_base, str):
        r = requests.post(f"{client_or_base}/pay/notify/sandbox", data=form, timeout=30)
        assert r.status_code == 200 and r.text == "success", r.text
    else:
        r = client_or_base.post("/pay/notify/sandbox", data=form)
        assert r.status_code == 200 and r.get_data(as_text=True) == "success"


def order_of(order_no: str) -> Order:
    _db.session.expire_all()
    return _db.session.scalar(select(Order).where(Order.order_no == order_no))


def delivered_shop_order(client, w, contact: str = "13800138000", quantity: int = 1) -> Order:
    r = checkout(client, w["code"], w["product"], contact=contact, quantity=quantity)
    assert r.status_code == 201, r.get_json()
    pay(client, r.get_json()["order_no"], r.get_json()["amount"])
    order = order_of(r.get_json()["order_no"])
    assert order.status == "delivered"
    return order


def refund(order: Order) -> None:
    refund_row = payments.refund_order(order.id, "买家申请退款", actor_id=None)
    assert h.channel_answers_refund(refund_row) == "succeeded"
    assert order_of(order.order_no).status == "refunded"


def ledger_ok() -> None:
    _db.session.rollback()
    assert check_ledger() == []


# --- catalogue, checkout, money ------------------------------------------------------------------------------------

def test_shop_sells_at_markup_and_delivery_credits_profit_and_upline_commissions_over_http(app, world):
    w = world
    tier_price = apply_rate(FACE, SELLER_BP)  # ¥90.00
    shop_price = tier_price + apply_rate(tier_price, MARKUP_BP)  # ¥99.00
    with served(app) as base:
        # the shop's catalogue: the storefront's shape, at the shop's price
        platform = requests.get(f"{base}/shop/api/products", timeout=30).json()["products"]
        listed = requests.get(f"{base}/s/{w['code']}/api/products", timeout=30)
        assert listed.status_code == 200
        [item] = listed.json()["products"]
        [public] = platform
        assert set(item) == set(public) and item["id"] == public["id"] == w["product"].id
        assert (public["price"], item["price"], item["in_stock"]) == (FACE, shop_price, True)
        # its pages show it in the shop's name and theme
        page = requests.get(f"{base}/s/{w['code']}/", timeout=30)
        assert page.status_code == 200 and "小王的点卡店" in page.text and "shops/game.css" in page.text
        assert "¥99.00" in page.text and "QQ 12345" in page.text

        # checkout exactly as the storefront's, and the sandbox pays it
        r = checkout(base, w["code"], w["product"])
        assert r.status_code == 201, r.text
        created = r.json()
        assert set(created) == {"order_no", "amount", "discount", "pay_url", "lookup_url"}
        assert created["amount"] == shop_price
        pay(base, created["order_no"], created["amount"])
        # the buyer reads the secret through the platform's lookup
        lookup = requests.post(f"{base}/shop/api/lookup", json={"order_no": created["order_no"],
                                                                "query_password": PASSWORD}, timeout=30).json()
        assert lookup["status"] == "delivered" and len(lookup["card_secrets"]) == 1

    order = order_of(created["order_no"])
    assert (order.agent_id, order.shop_id, order.unit_price, order.amount) == (None, w["shop"].id, shop_price,
                                                                               shop_price)
    assert (order.shop_base_amount, order.shop_profit, order.upline_path) == (tier_price, shop_price - tier_price,
                                                                              w["seller"].path)
    # the profit (¥9.00) pending for the seller; uplines on the tier price: mid 3 %, root 1 %
    assert balances(w["seller"]) == {"wallet": 0, "pending": 900, "frozen": 0}
    assert balances(w["mid"])["pending"] == apply_rate(tier_price, MID_DIRECT_BP) == 270
    assert balances(w["root"])["pending"] == apply_rate(tier_price, ROOT_INDIRECT_BP) == 90
    assert journal(f"shopprofit:{order.order_no}") == {
        "platform:shop_profit_expense": -900, f"agent:{w['seller'].id}:pending": 900, "_kind": "shop_profit"}
    assert journal(f"commission:{order.order_no}:accrue") == {
        "platform:commission_expense": -360, f"agent:{w['mid'].id}:pending": 270,
        f"agent:{w['root'].id}:pending": 90, "_kind": "commission_accrual"}
    rows = {c.agent_id: c for c in _db.session.scalars(select(Commission).where(Commission.order_id == order.id))}
    assert (rows[w["seller"].id].level, rows[w["seller"].id].amount, rows[w["seller"].id].base_amount) == (
        commissions.SHOP_PROFIT_LEVEL, 900, tier_price)
    assert (rows[w["mid"].id].level, rows[w["mid"].id].base_amount) == (1, tier_price)
    ledger_ok()

    # a refund reverses the profit and the commissions, and the sale
    refund(order)
    for agent in (w["seller"], w["mid"], w["root"]):
        assert balances(agent) == {"wallet": 0, "pending": 0, "frozen": 0}
    assert journal(f"shopprofit:{order.order_no}:reverse") == {
        "platform:shop_profit_expense": 900, f"agent:{w['seller'].id}:pending": -900,
        "_kind": "shop_profit_reversal"}
    assert journal(f"commission:{order.order_no}:reverse")["platform:commission_expense"] == 360
    assert {c.status for c in _db.session.scalars(select(Commission).where(Commission.order_id == order.id))} == {
        "reversed"}
    ledger_ok()


def test_profit_settles_t_plus_n_and_a_later_refund_takes_it_back_with_the_receivable_rule(app, world, client):
    w = world
    order = delivered_shop_order(client, w)
    # nothing due before T+1; then settled into the wallet with the commissions
    assert settlement.settle().settled_count == 0
    run = settlement.settle(cutoff=utcnow() + timedelta(days=2))
    assert run.settled_count == 1  # the seller's profit (T+1); the uplines' tiers settle T+7
    assert balances(w["seller"]) == {"wallet": 900, "pending": 0, "frozen": 0}
    ledger_ok()
    # the seller spends ¥5.00 of it; the refund takes the ¥4.00 left and books ¥5.00 owed
    w_seller = w["seller"]
    ledger.post_journal("test:spend", "adjustment", [ledger.Line(f"agent:{w_seller.id}:wallet", -500),
                                                      ledger.Line("platform:adjustments", 500)])
    _db.session.commit()
    refund(order)
    assert balances(w_seller)["wallet"] == 0
    assert commissions.receivable_owed([w_seller.id]) == {w_seller.id: 500}
    assert journal(f"shopprofit:{order.order_no}:reverse") == {
        "platform:shop_profit_expense": 900, f"agent:{w_seller.id}:wallet": -400,
        f"agent:{w_seller.id}:receivable": -500, "_kind": "shop_profit_reversal"}
    ledger_ok()
    # the next profit repays the debt first
    delivered_shop_order(client, w, contact="13900000001")
    settlement.settle(cutoff=utcnow() + timedelta(days=2))
    assert commissions.receivable_owed([w_seller.id]) == {}
    assert balances(w_seller)["wallet"] == 400
    ledger_ok()


def test_a_dispute_freezes_the_profit_and_a_rejection_releases_it(app, world, client):
    w = world
    order = delivered_shop_order(client, w)
    r = client.post("/shop/api/disputes", json={"order_no": order.order_no, "query_password": PASSWORD,
                                                "reason": "卡密无效"})
    assert r.status_code == 201
    assert balances(w["seller"]) == {"wallet": 0, "pending": 0, "frozen": 900}
    assert balances(w["mid"])["frozen"] == 270
    ledger_ok()
    from app.payments import disputes

    dispute = disputes.for_order(order.id)
    disputes.resolve(dispute.id, "reject", "卡密有效", actor_id=None)
    assert balances(w["seller"]) == {"wallet": 0, "pending": 900, "frozen": 0}
    ledger_ok()


def test_quantity_and_per_product_markup_are_priced_and_snapshotted(app, world, client):
    w = world
    shops.set_products(w["shop"].id, w["seller"].id, [shops.ProductSetting(w["product"].id, "12.5", False, True)])
    tier_price = apply_rate(FACE, SELLER_BP)
    unit = tier_price + apply_rate(tier_price, 1250)  # ¥101.25
    [item] = client.get(f"/s/{w['code']}/api/products").get_json()["products"]
    assert item["price"] == unit == 10125
    order = delivered_shop_order(client, w, quantity=2)
    assert (order.amount, order.shop_base_amount, order.shop_profit) == (2 * unit, 2 * tier_price, 2 * 1125)
    assert balances(w["seller"])["pending"] == 2250
    ledger_ok()


def test_hidden_products_are_not_listed_or_sold(app, world, client, f):
    w = world
    other = f.product(name="隐藏的商品", face_price=5000, cost=4000, secrets=2)
    shops.set_products(w["shop"].id, w["seller"].id, [shops.ProductSetting(other.id, "", True, False)])
    listed = {p["id"] for p in client.get(f"/s/{w['code']}/api/products").get_json()["products"]}
    assert listed == {w["product"].id}
    assert other.id in {p["id"] for p in client.get("/shop/api/products").get_json()["products"]}
    assert_error(checkout(client, w["code"], other), 404, "product_unavailable")
    assert client.get(f"/s/{w['code']}/buy/{other.id}").status_code == 404
    assert _db.session.scalar(select(func.count()).select_from(Order)) == 0


def test_risk_control_applies_to_shop_checkouts(app, world, client):
    from app.risk import lists

    lists.add("contact", "13700000000", "block", reason="test")
    _db.session.commit()
    r = checkout(client, world["code"], world["product"], contact="13700000000")
    assert_error(r, 403, "risk_blocked")
    assert _db.session.scalar(select(func.count()).select_from(Order)) == 0


def test_a_shop_page_checkout_goes_to_the_cashier_and_back_to_the_shops_lookup(app, world, client):
    w = world
    r = client.post(f"/s/{w['code']}/buy/{w['product'].id}", data={
        "quantity": "1", "contact": "13800138000", "query_password": PASSWORD, "channel": "sandbox"})
    assert r.status_code == 302 and "/pay/sandbox/cashier/" in r.headers["Location"]
    order_no = r.headers["Location"].rsplit("/", 1)[1]
    assert order_of(order_no).shop_id == w["shop"].id
    paid = client.post(f"/pay/sandbox/cashier/{order_no}", data={"result": "pay"})
    back = client.get(paid.headers["Location"])
    assert back.status_code == 303 and back.headers["Location"] == f"/s/{w['code']}/lookup?order_no={order_no}"
    page = client.post(f"/s/{w['code']}/lookup", data={"order_no": order_no, "query_password": PASSWORD})
    assert page.status_code == 200 and "card-secret" in page.get_data(as_text=True)
    assert "小王的点卡店" in page.get_data(as_text=True)
    # another shop's lookup does not show it
    ledger_ok()


# --- settings: bounds and the never-below-own-price rule ------------------------------------------------------------

def _login_seller(app, w):
    from tests import factories

    client = app.test_client()
    factories.login(client, w["seller"].user.username)
    return client


def test_markup_bounds_and_own_price_rule_refuse_bad_settings_with_a_form_error(app, world, f):
    w = world
    settings.set_shop_markup_bounds(500, 3000, actor_id=None)  # 5 % .. 30 %
    seller = _login_seller(app, w)

    def settings_post(markup: str):
        return seller.post("/portal/shop/settings", data={"name": "小王的点卡店", "theme": "game", "markup": markup,
                                                           "contact": "QQ 12345", "notice": ""})

    below = settings_post("-5")
    assert below.status_code == 400 and "不能低于您的拿货价" in below.get_data(as_text=True)
    assert 'id="shop-error"' in below.get_data(as_text=True)
    above = settings_post("31")
    assert above.status_code == 400 and "5.00% 到 30.00%" in above.get_data(as_text=True)
    under_min = settings_post("4.99")
    assert under_min.status_code == 400
    assert _db.session.get(AgentShop, w["shop"].id).markup_bp == MARKUP_BP  # nothing written
    ok = settings_post("20")
    assert ok.status_code == 302
    _db.session.expire_all()
    assert _db.session.get(AgentShop, w["shop"].id).markup_bp == 2000

    # per product: the same rules, the product named in the error, nothing saved
    pid = w["product"].id
    bad = seller.post("/portal/shop/products", data={"product_id": [str(pid)], f"markup_{pid}": "-1"})
    text = bad.get_data(as_text=True)
    assert bad.status_code == 400 and 'id="products-error"' in text and "测试点卡 100元" in text
    assert "不能低于您的拿货价" in text
    too_high = seller.post("/portal/shop/products", data={"product_id": [str(pid)], f"markup_{pid}": "45"})
    assert too_high.status_code == 400 and "30.00%" in too_high.get_data(as_text=True)
    assert _db.session.scalar(select(func.count()).select_from(AgentShopProduct)) == 0
    good = seller.post("/portal/shop/products", data={"product_id": [str(pid)], f"markup_{pid}": "7.5",
                                                      f"featured_{pid}": "on"})
    assert good.status_code == 302
    row = _db.session.scalar(select(AgentShopProduct))
    assert (row.markup_bp, row.hidden, row.featured) == (750, False, True)

    # an admin narrowing the bounds later clamps prices into them (never below the agent's price)
    settings.set_shop_markup_bounds(0, 500, actor_id=None)
    [item] = seller.get(f"/s/{w['code']}/api/products").get_json()["products"]
    tier_price = apply_rate(FACE, SELLER_BP)
    assert item["price"] == tier_price + apply_rate(tier_price, 500)

    # the admin's own form refuses a minimum above the maximum
    admin = app.test_client()
    f.login(admin, f.user(f.unique("admin"), role="Admin").username)
    r = admin.post("/platform-settings/form", data={"realname_required_above": "0", "shop_markup_min_bp": "40",
                                                    "shop_markup_max_bp": "10"}, follow_redirects=True)
    assert "最低加价不能高于最高加价" in r.get_data(as_text=True)
    assert settings.shop_markup_bounds() == (0, 500)
    r = admin.post("/platform-settings/form", data={"realname_required_above": "0", "shop_markup_min_bp": "2",
                                                    "shop_markup_max_bp": "25"}, follow_redirects=True)
    assert settings.shop_markup_bounds() == (200, 2500)
    assert _db.session.scalar(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.action == "setting.update", AuditEntry.target_id == "shop_markup_max_bp")) >= 1


def test_opening_needs_the_tier_permission_and_bounds(app, f, client):
    settings.set_shop_markup_bounds(500, 3000, actor_id=None)
    plain = f.agent(tier_obj=f.tier())
    c = app.test_client()
    f.login(c, plain.user.username)
    page = c.get("/portal/shop/").get_data(as_text=True)
    assert 'id="shop-refusal"' in page
    r = c.post("/portal/shop/open", data={"name": "我的店", "theme": "general", "markup": "10"})
    assert r.status_code == 400 and "不能开设分站" in r.get_data(as_text=True)
    allowed_tier = f.tier()
    allowed_tier.may_open_shop = True
    _db.session.commit()
    allowed = f.agent(tier_obj=allowed_tier)
    c2 = app.test_client()
    f.login(c2, allowed.user.username)
    r = c2.post("/portal/shop/open", data={"name": "我的店", "theme": "campus", "markup": "-1"})
    assert r.status_code == 400 and "不能低于您的拿货价" in r.get_data(as_text=True)
    r = c2.post("/portal/shop/open", data={"name": "我的店", "theme": "campus", "markup": "50"})
    assert r.status_code == 400
    assert _db.session.scalar(select(func.count()).select_from(AgentShop)) == 0
    r = c2.post("/portal/shop/open", data={"name": "我的店", "theme": "campus", "markup": "8"})
    assert r.status_code == 302
    shop = _db.session.scalar(select(AgentShop))
    assert (shop.agent_id, shop.theme, shop.markup_bp, shop.name) == (allowed.id, "campus", 800, "我的店")
    r = c2.post("/portal/shop/open", data={"name": "第二家", "theme": "campus", "markup": "8"})
    assert r.status_code == 400 and "已开设分站" in r.get_data(as_text=True)


def test_cli_shop_create(app, f):
    runner = app.test_cli_runner()
    settings.set_shop_markup_bounds(0, 3000, actor_id=None)
    tier = f.tier()
    tier.may_open_shop = True
    _db.session.commit()
    agent = f.agent(tier_obj=tier)
    plain = f.agent()
    result = runner.invoke(args=["kameng", "shop", "create", "--agent", agent.user.username, "--markup-bp", "1500",
                                 "--name", "命令行小店"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == {"code", "url"} and printed["url"].endswith(f"/s/{printed['code']}/")
    shop = _db.session.scalar(select(AgentShop).where(AgentShop.code == printed["code"]))
    assert (shop.agent_id, shop.markup_bp, shop.name) == (agent.id, 1500, "命令行小店")
    for args, words in ((["--agent", "nobody-here"], "no agent"),
                        (["--agent", plain.user.username], "不能开设分站"),
                        (["--agent", agent.user.username], "已开设分站")):
        refused = runner.invoke(args=["kameng", "shop", "create", *args])
        assert refused.exit_code != 0 and words in refused.output, refused.output
    other = f.agent(tier_obj=tier)
    for bp in ("3001", "-1"):
        refused = runner.invoke(args=["kameng", "shop", "create", "--agent", other.user.username, "--markup-bp", bp])
        assert refused.exit_code != 0 and "加价" in refused.output
    assert _db.session.scalar(select(func.count()).select_from(AgentShop)) == 1


# --- hosts -------------------------------------------------------------------------------------------------------

def test_only_an_approved_domain_is_served_as_the_shop(app, world, f, pg_url):
    w = world
    seller = _login_seller(app, w)
    r = seller.post("/portal/shop/domain", data={"domain": "Shop.Example.TEST."})
    assert r.status_code == 302
    row = _db.session.scalar(select(AgentShopDomain))
    assert (row.domain, row.status) == ("shop.example.test", "requested")
    assert seller.post("/portal/shop/domain", data={"domain": "http://x.test/path"}).status_code == 302
    assert _db.session.scalar(select(AgentShopDomain.domain)) == "shop.example.test"  # refused, unchanged
    anyone = app.test_client()
    # requested, not approved: the host is not the shop (development answers it as the platform)
    home = anyone.get("/", headers={"Host": "shop.example.test"})
    assert "小王的点卡店" not in home.get_data(as_text=True)
    assert anyone.get("/api/products", headers={"Host": "shop.example.test"}).status_code == 404

    # production: nothing but the platform's host and approved domains answers
    code, shop_id = w["code"], w["shop"].id
    prod = make_app(pg_url, KAMENG_ENV="production", SECRET_KEY="p" * 40, CARD_SECRET_KEY="c" * 40,
                    PUBLIC_BASE_URL="https://kameng.example.com")
    pc = prod.test_client()
    assert pc.get("/shop/", headers={"Host": "kameng.example.com"}).status_code == 200
    assert pc.get("/shop/", headers={"Host": "127.0.0.1:8000"}).status_code == 200  # loopback: a health check
    for host in ("shop.example.test", "evil.example.org", "203.0.113.7:8000"):
        assert pc.get("/", headers={"Host": host}).status_code == 421
        assert pc.get(f"/s/{code}/", headers={"Host": host}).status_code == 421
        assert pc.get("/healthz", headers={"Host": host}).status_code == 200  # a load balancer's probe, any host

    # an admin approves it (audited): now it is the shop, and only the shop
    admin = app.test_client()
    f.login(admin, f.user(f.unique("admin"), role="Admin").username)
    r = admin.post("/agent-shop-domains/action_post", data={"action": "approve_domain", "rowid": [str(row.id)]})
    assert r.status_code == 302
    _db.session.expire_all()
    assert _db.session.get(AgentShopDomain, row.id).status == "approved"
    assert _db.session.scalar(select(AuditEntry).where(AuditEntry.action == "shop.domain.approve")).target_id == \
        str(shop_id)
    with prod.app_context():
        shops.forget_hosts()
    for client in (pc, anyone):
        page = client.get("/", headers={"Host": "shop.example.test"})
        assert page.status_code == 200 and "小王的点卡店" in page.get_data(as_text=True)
        assert f'href="/buy/{w["product"].id}"' in page.get_data(as_text=True)  # links stay on the domain
        products = client.get("/api/products", headers={"Host": "shop.example.test"}).get_json()["products"]
        assert products[0]["price"] == 9900
        assert client.get("/login/", headers={"Host": "shop.example.test"}).status_code == 404
        assert client.get("/portal/buy", headers={"Host": "shop.example.test"}).status_code == 404
    r = pc.post("/api/orders", headers={"Host": "shop.example.test"}, json={
        "product_id": w["product"].id, "quantity": 1, "contact": "13800138000", "query_password": PASSWORD,
        "channel": "sandbox"})
    assert r.status_code == 400  # production has no sandbox: the shop's checkout answered, as the storefront's
    # revoked: gone again
    admin.post("/agent-shop-domains/action_post", data={"action": "reject_domain", "rowid": [str(row.id)]})
    with prod.app_context():
        shops.forget_hosts()
    assert pc.get("/", headers={"Host": "shop.example.test"}).status_code == 421
    with pytest.raises(Exception, match="不能使用平台自己的域名"):
        with prod.app_context():
            shops.normalize_domain("kameng.example.com")


# --- suspension and scope ----------------------------------------------------------------------------------------

def test_a_suspended_shop_answers_closed_and_refuses_checkout(app, world, f, client):
    w = world
    order = delivered_shop_order(client, w)
    admin = app.test_client()
    f.login(admin, f.user(f.unique("admin"), role="Admin").username)
    r = admin.post("/agent-shops/action_post", data={"action": "suspend", "rowid": [str(w["shop"].id)]})
    assert r.status_code == 302
    entry = _db.session.scalar(select(AuditEntry).where(AuditEntry.action == "shop.suspend"))
    assert entry is not None and json.loads(entry.new_value) == {"status": "suspended"}
    page = client.get(f"/s/{w['code']}/")
    assert page.status_code == 403 and "本店暂停营业" in page.get_data(as_text=True)
    assert "Shop closed" in page.get_data(as_text=True)
    assert_error(client.get(f"/s/{w['code']}/api/products"), 403, "shop_closed")
    assert_error(checkout(client, w["code"], w["product"]), 403, "shop_closed")
    buy = client.post(f"/s/{w['code']}/buy/{w['product'].id}", data={
        "quantity": "1", "contact": "13800138000", "query_password": PASSWORD, "channel": "sandbox"})
    assert buy.status_code == 403
    assert _db.session.scalar(select(func.count()).select_from(Order)) == 1
    # orders bought before are still the buyer's through the platform's lookup
    assert client.post("/shop/api/lookup", json={"order_no": order.order_no,
                                                 "query_password": PASSWORD}).status_code == 200
    # Manager reads the list but cannot suspend
    manager = app.test_client()
    f.login(manager, f.user(f.unique("mgr"), role="Manager").username)
    assert manager.get("/agent-shops/list/").status_code == 200
    manager.post("/agent-shops/action_post", data={"action": "resume", "rowid": [str(w["shop"].id)]})
    _db.session.expire_all()
    assert _db.session.get(AgentShop, w["shop"].id).status == "suspended"
    admin.post("/agent-shops/action_post", data={"action": "resume", "rowid": [str(w["shop"].id)]})
    assert checkout(client, w["code"], w["product"]).status_code == 201
    ledger_ok()


def test_an_agent_without_the_tier_permission_anymore_has_a_closed_shop(app, world, client):
    w = world
    w["seller"].tier.may_open_shop = False
    _db.session.commit()
    assert_error(checkout(client, w["code"], w["product"]), 403, "shop_closed")
    assert client.get(f"/s/{w['code']}/").status_code == 403


def test_an_agent_sees_only_its_own_shops_orders(app, world, f, client):
    w = world
    # a downline of the seller with a shop of its own
    downline = f.agent(parent=w["seller"], tier_obj=w["seller"].tier)
    other_shop = shops.open_shop(downline.id, "下级的店", MARKUP_BP)
    mine = delivered_shop_order(client, w)
    r = checkout(client, other_shop.code, w["product"], contact="13900000002")
    pay(client, r.get_json()["order_no"], r.get_json()["amount"])
    theirs = order_of(r.get_json()["order_no"])
    assert theirs.status == "delivered" and theirs.shop_id == other_shop.id

    seller = _login_seller(app, w)
    listing = seller.get("/portal/shop-orders/list/").get_data(as_text=True)
    assert mine.order_no in listing and theirs.order_no not in listing
    assert "13800138000" not in listing  # contacts masked
    assert seller.get(f"/portal/shop-orders/show/{mine.id}").status_code == 200
    hidden = seller.get(f"/portal/shop-orders/show/{theirs.id}", follow_redirects=True).get_data(as_text=True)
    assert theirs.order_no not in hidden
    # no card secret of its buyers anywhere in the portal
    from app.catalog import cards

    for value in cards.reveal(mine.id):
        assert value not in listing
        assert value not in seller.get(f"/portal/shop-orders/show/{mine.id}").get_data(as_text=True)
    # its portal order pages are for its own purchases: a shop order is not one
    assert seller.get(f"/portal/orders/{mine.order_no}").status_code == 404
    # the shop page's totals: its own shop only
    page = seller.get("/portal/shop/").get_data(as_text=True)
    assert 'id="total-orders">1<' in page and 'id="profit-pending">¥9.00<' in page


def test_portal_shop_pages_are_for_agents_only(app, world, f):
    support = app.test_client()
    f.login(support, f.user(f.unique("sup"), role="Support").username)
    for url in ("/portal/shop/", "/portal/shop/materials", "/portal/shop-orders/list/"):
        assert support.get(url).status_code in (302, 403)
    assert support.get("/agent-shops/list/").status_code == 200


# --- materials ---------------------------------------------------------------------------------------------------

def _qr_matches(image: Image.Image, link: str, box) -> bool:
    import segno

    for r, row in enumerate(segno.make(link, error="m").matrix):
        for c, dark in enumerate(row):
            x = box.left + c * box.scale + box.scale // 2
            y = box.top + r * box.scale + box.scale // 2
            pixel = image.getpixel((x, y))[:3]
            if (pixel == (0, 0, 0)) != bool(dark):
                return False
    return True


def test_posters_and_the_price_list_are_pngs_with_the_qr_of_the_link_and_cached(app, world):
    w = world
    seller = _login_seller(app, w)
    r = seller.get(f"/portal/shop/poster/{w['product'].id}.png")
    assert r.status_code == 200 and r.mimetype == "image/png" and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(r.data)).convert("RGB")
    assert image.size == materials.POSTER_SIZE
    link = f"http://localhost/s/{w['code']}/buy/{w['product'].id}"
    box = materials.qr_box(image.width, link, *materials.POSTER_QR)
    assert _qr_matches(image, link, box)
    # cached: the same bytes, one stored image; a price change draws a new one and drops the old
    assert seller.get(f"/portal/shop/poster/{w['product'].id}.png").data == r.data
    assert _db.session.scalar(select(func.count()).select_from(AgentShopMaterial)) == 1
    shops.set_products(w["shop"].id, w["seller"].id, [shops.ProductSetting(w["product"].id, "20", False, True)])
    again = seller.get(f"/portal/shop/poster/{w['product'].id}.png")
    assert again.data != r.data
    assert _db.session.scalar(select(func.count()).select_from(AgentShopMaterial)) == 1

    listing = seller.get("/portal/shop/pricelist.png?download=1")
    assert listing.status_code == 200 and "attachment" in listing.headers["Content-Disposition"]
    sheet = Image.open(io.BytesIO(listing.data)).convert("RGB")
    assert sheet.size == (1080, 1920)
    shop_link = f"http://localhost/s/{w['code']}/"
    assert _qr_matches(sheet, shop_link, materials.qr_box(1080, shop_link, materials.PRICE_LIST_QR_TOP,
                                                          materials.PRICE_LIST_QR_SIDE))
    page = seller.get("/portal/shop/materials").get_data(as_text=True)
    assert link in page and "小王的点卡店" in page and "¥108.00" in page  # 90 × 1.2
    # another agent cannot read this shop's materials (it has none of its own)
    assert seller.get("/portal/shop/poster/999999.png").status_code == 404


# --- rollups and the GMV dashboard -------------------------------------------------------------------------------

def test_shop_rollups_fold_like_a_rebuild_and_show_on_the_gmv_dashboard(app, world, client):
    from app.analytics import service as rollups
    from app.clock import to_local
    from dashboards.queries import gmv as q
    from tests.test_rollups import grouped

    w = world
    first = delivered_shop_order(client, w)
    delivered_shop_order(client, w, contact="13900000003")
    refund(first)
    rollups.fold_orders_all()
    day = to_local(utcnow()).date()
    folded = grouped("shop")
    expected = {(scope, str(day), w["shop"].id): (1, 9900, 900)
                for scope in (0, w["root"].id, w["mid"].id, w["seller"].id)}
    assert folded == expected
    # the sales rollup counts the shop's order in the seller's branch too
    sales = grouped("sales")
    assert sum(v[2] for k, v in sales.items() if k[0] == w["seller"].id) == 9900
    rollups.rebuild(day, day)
    assert grouped("shop") == folded and grouped("sales") == sales
    assert q.shops(w["seller"].id, day, day)["current"] == {"orders": 1, "gmv": 9900, "profit": 900}
    assert q.shops(w["root"].id, day, day)["shops"][0]["label"] == "小王的点卡店"
    ledger_ok()


def test_money_flows_count_shop_profit(app, world, client):
    from app.analytics import service as rollups
    from app.clock import to_local
    from tests.test_rollups import grouped

    w = world
    order = delivered_shop_order(client, w)
    refund(order)
    _db.session.execute(
        Journal.__table__.update().values(created_at=utcnow() - timedelta(minutes=5)))
    _db.session.commit()
    rollups.fold_money()
    day = str(to_local(utcnow() - timedelta(minutes=5)).date())
    money = grouped("money")
    assert money[(w["seller"].id, day, "shop_profit_accrued")] == (900, 1)
    assert money[(w["seller"].id, day, "shop_profit_reversed")] == (900, 1)
    assert money[(w["mid"].id, day, "commission_accrued")] == (270, 1)  # mid's branch: its own commission
    # the shop's sale counts in the seller's branch (revenue of the sale and its reversal net to zero)
    assert (w["seller"].id, day, "refunds") in money
    from datetime import date as _date

    rollups.rebuild(_date.fromisoformat(day), _date.fromisoformat(day))
    assert grouped("money") == money


def test_the_tier_form_grants_may_open_shop_audited(app, f):
    from tests.test_admin_screens import tier_form

    admin = app.test_client()
    user = f.user(f.unique("admin"), role="Admin")
    f.login(admin, user.username)
    tier = f.tier(name="铜牌")
    r = admin.post(f"/tiers/edit/{tier.id}", data=tier_form(name="铜牌", may_open_shop="y"), follow_redirects=True)
    assert r.status_code == 200
    _db.session.expire_all()
    assert _db.session.get(type(tier), tier.id).may_open_shop is True
    entry = _db.session.scalar(select(AuditEntry).where(AuditEntry.action == "tier.update"))
    assert json.loads(entry.old_value)["may_open_shop"] is False and json.loads(entry.new_value)["may_open_shop"]


def test_the_gmv_dashboard_shows_the_agents_shop_in_its_scope_only(app, world, client, f):
    from app.clock import to_local
    from tests.dashboards_helpers import agent_client, call_callback, filters, kpi_values, outputs

    w = world
    delivered_shop_order(client, w)
    stranger = f.agent()  # another branch: sees nothing of it
    day = to_local(utcnow()).date()
    for agent, expected in ((w["seller"], ("1", "¥99.00", "¥9.00")), (w["root"], ("1", "¥99.00", "¥9.00")),
                            (stranger, ("0", "¥0.00", "¥0.00"))):
        c = agent_client(app, f, agent)
        got = outputs(call_callback(c, "gmv", "gmv-shop-kpis.children", filters(day, day)))
        kpis = kpi_values(got["gmv-shop-kpis.children"])
        assert (kpis["kpi-shop-orders"], kpis["kpi-shop-gmv"], kpis["kpi-shop-profit"]) == expected, agent
        rows = got["gmv-by-shop-table.data"]
        assert [r["label"] for r in rows] == (["小王的点卡店"] if expected[0] == "1" else [])
        # the shop's sale counts in the branch's GMV as well
        assert kpi_values(got["gmv-kpis.children"])["kpi-gmv"] == expected[1]


def test_upline_commissions_stop_at_commission_max_levels(app, f, client):
    shops.forget_hosts()
    h.setup_sandbox()
    top = f.agent(tier_obj=f.tier(direct_commission_bp=500, indirect_commission_bp=400))
    root = f.agent(parent=top, tier_obj=f.tier(direct_commission_bp=500, indirect_commission_bp=ROOT_INDIRECT_BP))
    mid = f.agent(parent=root, tier_obj=f.tier(direct_commission_bp=MID_DIRECT_BP))
    tier = f.tier(discount_bp=SELLER_BP)
    tier.may_open_shop = True
    _db.session.commit()
    seller = f.agent(parent=mid, tier_obj=tier)
    product = f.product(face_price=FACE, cost=COST, secrets=2)
    shop = shops.open_shop(seller.id, "三层之下的店", MARKUP_BP)
    assert app.config["COMMISSION_MAX_LEVELS"] == 2
    order = delivered_shop_order(client, {"code": shop.code, "product": product})
    earned = {c.agent_id: (c.level, c.amount) for c in _db.session.scalars(
        select(Commission).where(Commission.order_id == order.id))}
    assert earned == {seller.id: (0, 900), mid.id: (1, 270), root.id: (2, 90)}  # top: beyond two levels
    assert balances(top)["pending"] == 0
    ledger_ok()

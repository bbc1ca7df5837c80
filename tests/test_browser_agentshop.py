"""One real-browser journey in an agent's shop on a phone-sized viewport (Debian's Chromium through Playwright, CSRF
on): a consumer opens the agent's shop (游戏 theme), buys a card at the shop's price, pays on the sandbox cashier,
comes back to the shop's lookup and reads the card secret once the order password is entered; then the agent,
signed in to the portal, sees the order and its shop profit pending."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.agentshops import service as shops
from app.ledger import service as ledger
from app.orders.models import Order
from app.payments import service as payments
from tests.test_browser import TIMEOUT_MS, _log_in, browser, live_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser
PHONE = {"width": 390, "height": 844}


def test_a_consumer_buys_in_an_agents_shop_on_a_phone_and_the_agent_sees_the_profit(app, db, f, live_server,  # noqa: F811
                                                                                    browser):  # noqa: F811
    base = live_server
    payments.save_channel("sandbox", True, {"key": "browser-sandbox-key"})
    tier = f.tier(discount_bp=9000, settle_days=1)
    tier.may_open_shop = True
    db.session.commit()
    seller = f.agent(tier_obj=tier)
    product = f.product(name="网易一卡通 50元", face_price=5000, cost=4200)
    [secret] = f.stock(product, 1, prefix="WY50-SHOP-7QX")
    shop = shops.open_shop(seller.id, "一号玩家点卡铺", 1000, theme="game", contact="QQ 800100100")
    code, seller_login, seller_id, product_id = shop.code, seller.user.username, seller.id, product.id

    ctx = browser.new_context(locale="zh-CN", viewport=PHONE, is_mobile=True, has_touch=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(f"{base}/s/{code}/")
    assert page.locator("#shop-name").inner_text() == "一号玩家点卡铺"
    tile = page.locator(f".product[data-product-id='{product_id}']")
    assert tile.locator(".price").inner_text().strip() == "¥49.50"  # ¥45.00 + 10 %
    # mobile first: the page fits the phone's width
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    with page.expect_navigation():
        tile.locator("a.btn").click()
    assert page.url.endswith(f"/s/{code}/buy/{product_id}")
    page.fill("#contact", "13800138000")
    page.fill("#query_password", "my-order-pass")
    page.select_option("#channel", "sandbox")
    with page.expect_navigation(url=re.compile(r"/pay/sandbox/cashier/\d+$")):
        page.click("#checkout button[type=submit]")
    order_no = page.locator("#order-no").inner_text().strip()
    assert page.locator("#order-amount").inner_text().strip() == "¥49.50"
    with page.expect_navigation(url=re.compile(rf"/s/{code}/lookup\?order_no=\d+$")):
        page.click("#pay")
    assert page.locator("#shop-name").inner_text() == "一号玩家点卡铺"  # back in the shop, in its theme
    assert secret not in page.content()
    page.fill("#query_password", "my-order-pass")
    with page.expect_navigation():
        page.click("form.card button[type=submit]")
    assert page.locator("#lookup-result .status").inner_text().strip() == "已到账"
    assert page.locator("#lookup-result .card-secret").first.inner_text() == secret
    ctx.close()

    db.session.expire_all()
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert (order.status, order.amount, order.shop_id, order.shop_profit) == ("delivered", 4950, shop.id, 450)
    assert ledger.agent_balances(seller_id)["pending"] == 450

    # the agent, on its phone too, sees the order and the profit in the portal
    agent_ctx = browser.new_context(locale="zh-CN", viewport=PHONE)
    agent_ctx.set_default_timeout(TIMEOUT_MS)
    portal = agent_ctx.new_page()
    _log_in(portal, base, seller_login, "test-pass-123")
    portal.goto(f"{base}/portal/shop/")
    assert portal.locator("#total-orders").inner_text().strip() == "1"
    assert portal.locator("#total-profit").inner_text().strip() == "¥4.50"
    assert portal.locator("#profit-pending").inner_text().strip() == "¥4.50"
    portal.goto(f"{base}/portal/shop-orders/list/")
    assert order_no in portal.content() and secret not in portal.content()
    agent_ctx.close()

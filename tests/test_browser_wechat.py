"""A real-browser journey (Debian's Chromium through Playwright, CSRF on) with WeChat Pay native: a buyer checks out,
gets the QR page, pays with the phone (the WeChat Pay simulator, over real HTTP), the page notices and moves on to
the lookup, and the card secret appears only after the buyer enters the order password."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from app.orders.models import Order
from tests import channel_sim_helpers as csh
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401  (fixture)

gateway = csh.gateway
SCREENSHOT = Path("/tmp/kameng-wechat-qr.png")

pytestmark = pytest.mark.browser


@pytest.fixture
def served(app, pg_url):
    """The real app (CSRF on) served from a thread, its PUBLIC_BASE_URL its own address (the notify URL)."""
    with csh.served_with_own_base_url(pg_url) as base:
        yield base


def test_buyer_pays_with_wechat_native_and_reads_the_secret_after_the_password(app, db, f, gateway,  # noqa: F811
                                                                                  served, browser):  # noqa: F811
    sim = gateway("wechatpay")
    product = f.product(name="腾讯Q币 10元", face_price=1000, cost=900)
    [secret] = f.stock(product, 1, prefix="QB10-WX7K-3M9P")
    product_id = product.id

    ctx = browser.new_context(locale="zh-CN", viewport={"width": 900, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(f"{served}/shop/buy/{product_id}")
    page.fill("#contact", "13800138000")
    page.fill("#query_password", "wx-order-pass")
    page.select_option("#channel", "wechatpay")
    with page.expect_navigation(url=re.compile(r"/pay/wechatpay/qr/\d+$")):
        page.click("#checkout button[type=submit]")
    order_no = page.locator("#order-no").inner_text().strip()
    assert page.locator("#order-amount").inner_text().strip() == "¥10.00"
    assert page.locator("#qr svg").count() == 1
    assert secret not in page.content()

    # the buyer scans the code and pays in WeChat: the gateway notifies us; the page notices and moves on
    sim.pay(order_no)
    page.wait_for_url(re.compile(r"/shop/lookup\?order_no=\d+$"), timeout=TIMEOUT_MS)
    assert page.locator("#order_no").input_value() == order_no
    assert secret not in page.content() and page.locator(".card-secret").count() == 0

    # the order password shows the secret
    page.fill("#query_password", "wx-order-pass")
    with page.expect_navigation():
        page.click("form.card button[type=submit]")
    shown = page.locator("#lookup-result .card-secret")
    assert shown.count() == 1 and shown.first.inner_text() == secret
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    ctx.close()

    db.session.expire_all()
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert (order.status, order.channel, order.amount) == ("delivered", "wechatpay", 1000)

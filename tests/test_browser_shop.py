"""One real-browser journey on the storefront (Debian's Chromium through Playwright, CSRF on): a buyer without an
account picks a card product, checks out, pays on the sandbox cashier, and reads the card secret on the lookup once
the order password is entered (the cashier never shows it)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from app.orders.models import Order
from app.payments import service as payments
from app.payments.models import Payment
from tests.test_browser import TIMEOUT_MS, browser, live_server  # noqa: F401  (fixtures)

SCREENSHOT = Path("/tmp/kameng-shop-order.png")

pytestmark = pytest.mark.browser


def test_buyer_checks_out_pays_on_the_sandbox_cashier_and_sees_the_card_secret(app, db, f, live_server,  # noqa: F811
                                                                                  browser):  # noqa: F811
    base = live_server
    payments.save_channel("sandbox", True, {"key": "browser-sandbox-key"})
    product = f.product(name="网易一卡通 50元", face_price=5000, cost=4200)
    [secret] = f.stock(product, 1, prefix="WY50-8H2K-Q7PX")
    f.product(name="其他商品", face_price=3000, cost=2000, secrets=1)
    product_id = product.id

    ctx = browser.new_context(locale="zh-CN", viewport={"width": 900, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(f"{base}/shop/")
    card = page.locator(f".product[data-product-id='{product_id}']")
    assert card.locator("h3").inner_text() == "网易一卡通 50元"
    assert card.locator(".price").inner_text().strip() == "¥50.00"
    with page.expect_navigation():
        card.locator("a.btn").click()
    assert page.url.endswith(f"/shop/buy/{product_id}")
    assert page.locator("#checkout input[name=csrf_token]").count() == 1

    page.fill("#contact", "13800138000")
    page.fill("#query_password", "my-order-pass")
    page.select_option("#channel", "sandbox")
    with page.expect_navigation(url=re.compile(r"/pay/sandbox/cashier/\d+$")):
        page.click("#checkout button[type=submit]")
    order_no = page.locator("#order-no").inner_text().strip()
    assert page.locator("#order-amount").inner_text().strip() == "¥50.00"

    with page.expect_navigation(url=re.compile(r"/shop/lookup\?order_no=\d+$")):
        page.click("#pay")
    assert page.locator("#order_no").input_value() == order_no
    assert secret not in page.content()
    page.fill("#query_password", "my-order-pass")
    with page.expect_navigation():
        page.click("form.card button[type=submit]")
    assert page.locator("#lookup-result .status").inner_text().strip() == "已到账"
    shown = page.locator("#lookup-result .card-secret")
    assert shown.count() == 1 and shown.first.inner_text() == secret
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # CSRF is enforced on the served app: the cashier refuses a POST without the token.
    refused = ctx.request.post(f"{base}/pay/sandbox/cashier/{order_no}", form={"result": "pay"}, max_redirects=0)
    assert refused.status == 400
    ctx.close()

    db.session.expire_all()
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert order.status == "delivered" and order.amount == 5000 and order.contact == "13800138000"
    [payment] = db.session.scalars(select(Payment).where(Payment.order_id == order.id))
    assert (payment.channel, payment.amount, payment.status) == ("sandbox", 5000, "paid")

"""A real-browser journey (Debian's Chromium through Playwright, CSRF on) with 易支付 and the delivery e-mail: a buyer
checks out with an e-mail address, pays on the epay simulator's cashier (its signed GET notification reaches the
app), and finds the card secret in the e-mail a real SMTP server on 127.0.0.1 (aiosmtpd) captured; the e-mail's
lookup link, with the order password, shows the same secret in the browser."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from app.notices.models import DeliveryNotice
from app.orders.models import Order
from tests import channel_sim_helpers as csh
from tests import mail_helpers as mh
from tests.test_browser import TIMEOUT_MS, browser  # noqa: F401  (fixture)

gateway = csh.gateway
SCREENSHOT = Path("/tmp/kameng-epay-mail.png")

pytestmark = pytest.mark.browser


@pytest.fixture
def mailbox():
    server = mh.SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def served(app, pg_url, mailbox):
    """The real app (CSRF on) served from a thread; its PUBLIC_BASE_URL its own address; its SMTP the mailbox."""
    with csh.served_with_own_base_url(pg_url, SMTP_HOST="127.0.0.1", SMTP_PORT=mailbox.port, SMTP_TLS="none",
                                      SMTP_FROM="卡盟商城 <shop@kameng.example>", SMTP_TIMEOUT=5) as base:
        yield base


def test_buyer_pays_with_epay_and_finds_the_secret_in_the_email(app, db, f, gateway, served, mailbox,  # noqa: F811
                                                               browser):  # noqa: F811
    sim = gateway("epay")
    product = f.product(name="网易一卡通 30元", face_price=3000, cost=2700)
    [secret] = f.stock(product, 1, prefix="WY30-EPAY-9Q2T")
    product_id = product.id

    ctx = browser.new_context(locale="zh-CN", viewport={"width": 900, "height": 1000})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(f"{served}/shop/buy/{product_id}")
    page.fill("#contact", "qq:20240101")
    page.fill("#email", "buyer@example.com")
    page.fill("#query_password", "epay-order-pass")
    page.select_option("#channel", "epay")
    # the storefront sends the browser to the provider's submit.php: its cashier
    with page.expect_navigation(url=re.compile(r"/submit\.php\?")):
        page.click("#checkout button[type=submit]")
    assert "易支付收银台" in page.content() and secret not in page.content()
    order_no = db.session.scalar(select(Order.order_no).order_by(Order.id.desc()).limit(1))
    assert mailbox.messages == []  # nothing before the payment

    # the buyer pays: the provider notifies the app (GET, MD5-signed) and sends the browser back to the lookup
    with page.expect_navigation(url=re.compile(r"/shop/lookup\?order_no=\d+$")):
        page.click("#epay-pay")
    assert page.locator("#order_no").input_value() == order_no
    assert secret not in page.content()

    # the e-mail the SMTP server captured holds the secret and the lookup link
    [message] = mailbox.wait(1, timeout=20)
    body = mh.text_of(message)
    assert message["To"] == "buyer@example.com" and order_no in message["Subject"]
    assert secret in body
    link = re.search(r"https?://\S+/shop/lookup\?order_no=\d+", body).group(0)
    assert link == f"{served}/shop/lookup?order_no={order_no}"

    # the link and the order password show the same secret
    page.goto(link)
    page.fill("#query_password", "epay-order-pass")
    with page.expect_navigation():
        page.click("form.card button[type=submit]")
    shown = page.locator("#lookup-result .card-secret")
    assert shown.count() == 1 and shown.first.inner_text() == secret
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    ctx.close()

    db.session.expire_all()
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert (order.status, order.channel, order.amount) == ("delivered", "epay", 3000)
    notice = db.session.scalar(select(DeliveryNotice).where(DeliveryNotice.order_id == order.id))
    assert (notice.status, notice.attempts) == ("sent", 1)
    assert [o["notify_status"] for o in sim.orders()] in (["answered"], ["sending"])

"""One real-browser journey in Debian's Chromium (Playwright), against the real app on PostgreSQL with CSRF on.

An admin lowers a tier's discount through the tier form; that tier's agent then sees the new price on the buy
page, buys one card and reads its secret on the order page. `make browser` installs chromium and fonts-noto-cjk.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from app.agents.models import Tier
from app.orders.models import Order
from tests.conftest import make_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/kameng-browser-order.png")
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.browser


@pytest.fixture
def live_server(app, pg_url):
    """The real app (CSRF enabled, its own AppBuilder) on the test database, served from a background thread."""
    from werkzeug.serving import make_server

    served = make_app(pg_url, WTF_CSRF_ENABLED=True)
    assert served.config["WTF_CSRF_ENABLED"] is True
    server = make_server("127.0.0.1", 0, served, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        with served.app_context():
            from app.extensions import db

            db.session.remove()
            db.engine.dispose()  # no pooled connection of the served app outlives the test (TRUNCATE waits)


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt: chromium fonts-noto-cjk)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _log_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("form[name=login] [type=submit]")
    assert "/login" not in page.url, f"login failed for {username}: {page.url}\n{page.inner_text('body')[:500]}"


def test_admin_lowers_a_tier_discount_then_its_agent_buys_a_card_at_the_new_price(app, db, f, live_server, browser):
    base = live_server
    admin = f.user(f.unique("admin"), role="Admin")
    tier = f.tier(name=f.unique("金牌代理"), discount_bp=9500)
    agent = f.agent(tier_obj=tier, balance=100_000)  # ¥1,000.00
    product = f.product(name="腾讯Q币 100元卡", face_price=10000, cost=7000)
    [secret] = f.stock(product, 1, prefix="QB100-7F3K-9Q2M")
    tier_id, agent_id, product_id = tier.id, agent.id, product.id

    # 1. The admin logs in through the form and changes the discount from 95 to 80 in the tier's edit form.
    admin_ctx = browser.new_context(locale="zh-CN")
    admin_ctx.set_default_timeout(TIMEOUT_MS)
    page = admin_ctx.new_page()
    _log_in(page, base, admin.username, f.PASSWORD)
    page.goto(f"{base}/tiers/edit/{tier_id}")
    discount = page.locator("input[name=discount_bp]")
    assert discount.input_value() == "95.00"
    assert page.locator("input[name=csrf_token]").count() >= 1  # the form carries its CSRF token
    discount.fill("80")
    with page.expect_navigation():
        page.locator("form:has(input[name=discount_bp]) button[type=submit]").click()
    db.session.expire_all()
    saved = db.session.scalar(select(Tier.discount_bp).where(Tier.id == tier_id))
    assert saved == 8000, f"tier not saved ({saved}); the page said:\n{page.inner_text('body')[:800]}"
    admin_ctx.close()

    # 2. The agent logs in (a separate browser), sees the new price, and buys one card.
    agent_ctx = browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 900})
    agent_ctx.set_default_timeout(TIMEOUT_MS)
    page = agent_ctx.new_page()
    _log_in(page, base, agent.name, f.PASSWORD)

    # CSRF is really enforced on the buy form: the same session posting without the token is refused.
    refused = agent_ctx.request.post(f"{base}/portal/buy", form={"product_id": str(product_id), "quantity": "1"},
                                     max_redirects=0)
    assert refused.status == 400, refused.status

    page.goto(f"{base}/portal/buy")
    row = page.locator(f"#offers tr[data-product-id='{product_id}']")
    assert row.locator(".offer-name").inner_text() == "腾讯Q币 100元卡"
    assert row.locator(".my-price").inner_text().strip() == "¥80.00"  # 100.00 × 80%
    assert page.locator("#wallet-balance").inner_text().strip() == "¥1,000.00"
    row.locator("input[name=quantity]").fill("1")
    with page.expect_navigation(url=re.compile(r"/portal/orders/\d+$")):
        row.locator("button[type=submit]").click()

    # 3. The order page shows the delivered order and exactly the imported secret.
    order_no = page.locator("#order-no").inner_text().strip()
    assert page.url.endswith(f"/portal/orders/{order_no}")
    assert page.locator("#order-amount").inner_text().strip() == "¥80.00"
    assert page.locator("#order-status").inner_text().strip() == "已到账"
    shown = page.locator("#card-secrets .card-secret")
    assert shown.count() == 1
    assert shown.first.inner_text() == secret
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    agent_ctx.close()

    db.session.expire_all()
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert order is not None and order.agent_id == agent_id and order.status == "delivered"
    assert (order.unit_price, order.amount, order.quantity) == (8000, 8000, 1)
    assert f.wallet(agent) == 100_000 - 8000

"""In Debian's Chromium (Playwright) against the real app: support signs in on its workbench, finds a buyer's order by
phone, previews a bulk compensation and issues it through the confirmation prompt; no page breaks the CSP."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.extensions import db as _db
from app.support.models import CompensationBatch
from tests.test_browser import TIMEOUT_MS, _log_in, browser, live_server  # noqa: F401  (fixtures)
from tests.test_browser_csp import Violations, _context, _event_violations

pytestmark = pytest.mark.browser


def test_support_works_from_its_workbench_under_the_csp(app, db, f, live_server, browser):  # noqa: F811
    from tests.payments_helpers import guest_order, notify, setup_sandbox, trade_no

    setup_sandbox()
    _db.session.commit()
    product = f.product(name=f.unique("点卡"), face_price=2000, cost=1500, secrets=5)
    client = app.test_client()
    for contact in ("13800138000", "13900000000"):
        order = guest_order(product, "sandbox", contact=contact)
        assert notify(client, "sandbox", order, trade_no()).status_code == 200
    support = f.user(f.unique("support"), role="Support")

    ctx = _context(browser)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    seen = Violations(page)
    _log_in(page, live_server, support.username, f.PASSWORD)
    page.goto(f"{live_server}/")
    page.locator("#workbench #todo").wait_for()
    assert page.locator("#kpi-gmv").count() == 0 and page.locator("#kpi-orders .today").inner_text() == "2"

    page.goto(f"{live_server}/support-search/")
    page.fill("#q", "+86 138-0013-8000")
    with page.expect_navigation():
        page.click("#support-search-form [type=submit]")
    assert page.locator("tr.search-row").count() == 1
    assert "13800138000" not in page.content()

    page.goto(f"{live_server}/compensation/")
    page.select_option("#product_id", str(product.id))
    with page.expect_navigation():
        page.click("#preview-button")
    assert page.locator("#preview-buyers").inner_text() == "2"
    page.fill("#amount", "5")
    page.fill("#reason", "浏览器测试补偿")
    prompts: list[str] = []
    page.once("dialog", lambda dialog: (prompts.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        page.click("#issue-button")
    assert prompts and "2" in prompts[0]
    assert "/compensation-batches/show/" in page.url
    _db.session.rollback()
    assert _db.session.scalar(select(func.count()).select_from(CompensationBatch)) == 1
    assert seen.csp() == [] and _event_violations(page) == [], (seen.messages, _event_violations(page))
    ctx.close()

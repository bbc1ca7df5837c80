"""The Content-Security-Policy does not break pages, in Debian's Chromium (Playwright) against the real app.

A manager's dashboard renders its graphs inside the embedding page (the Dash renderer runs by its hash, the frame
is same-origin), FAB's login page and an admin list page run their scripts, and the storefront's pages load, each
without a single CSP violation in the console. `make browser` installs chromium.
"""
from __future__ import annotations

import pytest

from tests.test_browser import TIMEOUT_MS, _log_in, browser, live_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


class Violations:
    """Every console message and page error that mentions the Content Security Policy, from any frame."""

    def __init__(self, page):
        self.messages: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.messages.append(f"pageerror: {exc}"))

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.messages.append(message.text)

    def csp(self) -> list[str]:
        return [m for m in self.messages if "Content Security Policy" in m or "Content-Security-Policy" in m]


def _context(browser):  # noqa: F811
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    # Also record violations the console might not show (reported as securitypolicyviolation events).
    ctx.add_init_script("""
        window.__cspViolations = [];
        document.addEventListener('securitypolicyviolation', function (e) {
            window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
        });""")
    return ctx


def _event_violations(page) -> list[str]:
    found = []
    for frame in page.frames:
        try:
            found += frame.evaluate("window.__cspViolations || []")
        except Exception:  # noqa: BLE001 (a frame navigating away)
            pass
    return found


def test_dashboard_renders_its_graph_under_the_csp(app, db, f, live_server, browser):  # noqa: F811
    manager = f.user(f.unique("manager"), role="Manager")
    ctx = _context(browser)
    page = ctx.new_page()
    seen = Violations(page)
    _log_in(page, live_server, manager.username, f.PASSWORD)
    page.goto(f"{live_server}/analytics/gmv/")
    frame = page.frame_locator("#dashboard-frame")
    graph = frame.locator(".js-plotly-plot .main-svg").first
    graph.wait_for(state="visible")
    assert frame.locator(".js-plotly-plot").count() >= 1
    page.wait_for_timeout(500)  # callbacks that were still answering
    assert seen.csp() == [] and _event_violations(page) == [], (seen.messages, _event_violations(page))
    assert [m for m in seen.messages if m.startswith("pageerror")] == []
    ctx.close()


def test_fab_login_and_an_admin_list_page_under_the_csp(app, db, f, live_server, browser):  # noqa: F811
    admin = f.user(f.unique("admin"), role="Admin")
    agent = f.agent(name=f.unique("代理"))
    ctx = _context(browser)
    page = ctx.new_page()
    seen = Violations(page)
    _log_in(page, live_server, admin.username, f.PASSWORD)
    page.goto(f"{live_server}/agents/list/")
    page.get_by_text(agent.name).first.wait_for(state="visible")
    # FAB's scripts ran: jQuery is loaded and the menu's dropdown opens on a click.
    assert page.evaluate("typeof window.jQuery") == "function"
    page.locator(".navbar .dropdown-toggle").first.click()
    page.locator(".navbar .dropdown.open, .navbar .dropdown-menu.show, .navbar li.open").first.wait_for()
    assert seen.csp() == [] and _event_violations(page) == [], (seen.messages, _event_violations(page))
    ctx.close()


def test_storefront_pages_under_the_csp(app, db, f, live_server, browser):  # noqa: F811
    from app.portal.service import public_offers  # noqa: F401  (the catalogue the index shows)
    from tests import payments_helpers as h

    h.setup_sandbox()
    product = f.product(name="腾讯Q币 10元卡", face_price=1000, cost=800, secrets=2)
    ctx = _context(browser)
    page = ctx.new_page()
    seen = Violations(page)
    for path in ("/shop/", f"/shop/buy/{product.id}", "/shop/lookup"):
        page.goto(f"{live_server}{path}")
        page.wait_for_load_state("networkidle")
    # The buy page's device id comes from the self-hosted FingerprintJS: it ran.
    page.goto(f"{live_server}/shop/buy/{product.id}")
    from playwright.sync_api import expect

    expect(page.locator("input[name=device_id]")).not_to_have_value("")
    assert seen.csp() == [] and _event_violations(page) == [], (seen.messages, _event_violations(page))
    ctx.close()


def test_confirm_prompts_still_ask_without_inline_handlers(app, db, f, live_server, browser):  # noqa: F811
    """The revoke button's "确定吊销？" comes from static/kameng/confirm.js (data-confirm), not an inline onsubmit:
    dismissing it sends nothing, accepting it revokes the key."""
    from app.openapi import service as openapi
    from app.openapi.models import ApiKey

    agent = f.agent()
    key, _secret = openapi.create_key(agent.id, "csp", None)
    key_id = key.id
    ctx = _context(browser)
    page = ctx.new_page()
    seen = Violations(page)
    _log_in(page, live_server, agent.name, f.PASSWORD)
    page.goto(f"{live_server}/portal/api-keys/")
    answers, asked = iter([False, True]), []

    def on_dialog(dialog):
        asked.append(dialog.message)
        dialog.accept() if next(answers) else dialog.dismiss()

    page.on("dialog", on_dialog)
    button = page.locator(f"form[action='/portal/api-keys/revoke/{key_id}'] button")
    button.click()
    page.wait_for_timeout(300)
    db.session.expire_all()
    assert asked and db.session.get(ApiKey, key_id).active  # dismissed: nothing sent
    with page.expect_navigation():
        button.click()
    db.session.expire_all()
    assert len(asked) == 2 and not db.session.get(ApiKey, key_id).active
    assert seen.csp() == [] and _event_violations(page) == [], (seen.messages, _event_violations(page))
    ctx.close()

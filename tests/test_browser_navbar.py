"""In Debian's Chromium at 1366×768: the admin's navbar is one row, in Chinese and in English, and its menus still
hold every screen registered in the menu (no entry lost when the categories were regrouped by the operator's job)."""
from __future__ import annotations

import pytest

from tests.test_browser import TIMEOUT_MS, _log_in, browser, live_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1366, 768


def _menu_entries(app) -> tuple[list[str], set[str]]:
    """(top-level names in order, every entry's link) as registered, i.e. what the admin may open."""
    with app.test_request_context():
        items = [item for item in app.appbuilder.menu.get_list() if item.name != "-"]
        entries = {child.get_url() for item in items for child in item.childs or [] if child.name != "-"}
        return [item.name for item in items], entries


def _navbar(page) -> dict:
    """The rendered navbar: its height, each top-level entry's top and height, and every link's label."""
    return page.evaluate("""() => {
        const bar = document.querySelector('.navbar');
        const tops = [...document.querySelectorAll('.navbar-collapse > ul > li')].map(li => {
            const r = li.getBoundingClientRect();
            return {top: Math.round(r.top), height: Math.round(r.height), width: Math.round(r.width),
                    text: li.innerText.trim()};
        }).filter(li => li.height > 0);
        const links = [...document.querySelectorAll('.navbar-collapse ul.dropdown-menu li a')]
            .map(a => a.getAttribute('href')).filter(h => h && h !== '#');
        return {height: Math.round(bar.getBoundingClientRect().height), tops, links};
    }""")


def test_the_admin_navbar_is_one_row_at_1366_in_both_languages(app, db, f, live_server, browser):  # noqa: F811
    from app.views import MENU_ORDER

    admin = f.user(f.unique("admin"), role="Admin")
    top_level, entries = _menu_entries(app)
    assert top_level[:len(MENU_ORDER)] == list(MENU_ORDER), top_level
    assert len(top_level) == len(MENU_ORDER) and len(entries) >= 80, (top_level, len(entries))

    ctx = browser.new_context(locale="zh-CN", viewport={"width": WIDTH, "height": HEIGHT})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    _log_in(page, live_server, admin.username, f.PASSWORD)
    for lang in ("zh", "en"):
        page.goto(f"{live_server}/lang/{lang}")
        page.goto(f"{live_server}/orders/list/")
        bar = _navbar(page)
        page.screenshot(path=f"/tmp/kameng-navbar-{lang}.png")
        rows = {li["top"] for li in bar["tops"]}
        tallest = max(li["height"] for li in bar["tops"])
        assert len(rows) == 1, (lang, bar["tops"])  # every top-level entry (menus and the right side) on one row
        assert bar["height"] <= tallest + 2, (lang, bar["height"], tallest)
        # every registered entry is in a dropdown: none was lost when the categories were regrouped
        assert set(bar["links"]) >= entries, sorted(entries - set(bar["links"]))
    ctx.close()

"""Chinese first, English selectable: our labels, menus and pages follow GET /lang/en, and the English catalog
(app/translations/en, built by `make translations`) is complete, compiled and up to date with the menus and views."""
from __future__ import annotations

import re
from pathlib import Path

import flask_babel
import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
PO = ROOT / "app" / "translations" / "en" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")
CJK = re.compile(r"[\u3400-\u9fff]")
_MENU = re.compile(r'<ul class="nav navbar-nav">(.*?)</ul>\s*<ul class="nav navbar-nav navbar-right">', re.S)
_HOW = "run `make translations` after adding the English to tools/translations_en.py"


def fresh_request_state() -> None:
    """Every request of a test shares the test's app context (and its g), where Flask-Babel caches the locale:
    forget it, so each request takes its locale from its own client's session as in production (conftest already
    forgets Flask-Login's cached user before each request)."""
    flask_babel.refresh()


def get(client, url: str):
    fresh_request_state()
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code)
    return r.text


def switch(client, locale: str) -> None:
    fresh_request_state()
    assert client.get(f"/lang/{locale}").status_code == 302


def menu(page: str) -> str:
    found = _MENU.search(page)
    assert found, "no navbar menu on the page"
    return re.sub(r"<[^>]+>", " ", found.group(1))


@pytest.fixture
def admin(f, client):
    user = f.user(f.unique("admin"), role="Admin")
    f.login(client, user.username)
    return user


@pytest.fixture
def agent_client(app, f):
    a = f.agent(balance=50000)
    f.product(name="测试点卡", secrets=2)
    c = app.test_client()
    f.login(c, a.user.username)
    return c


def test_admin_page_is_chinese_by_default_and_english_after_lang_en(admin, client, f):
    f.tier(name="金牌代理")
    page = get(client, "/tiers/list/")
    assert "代理等级" in page and "拿货折扣" in page and "订单" in menu(page)
    assert "Agent tiers" not in page

    switch(client, "en")
    page = get(client, "/tiers/list/")
    assert "Agent tiers" in page and "Purchase discount" in page and "May withdraw" in page
    assert "代理等级" not in page and "拿货折扣" not in page
    assert "金牌代理" in page  # data stays as entered
    nav = menu(page)
    for label in ("Orders", "Agents", "Catalog", "Restock alerts", "Audit log", "Money", "Payments"):
        assert label in nav, label
    assert not CJK.findall(nav), f"Chinese left in the English menu: {''.join(CJK.findall(nav))} ({_HOW})"

    page = get(client, "/agents/add")
    assert "Agent name" in page and "Upline" in page and "代理名称" not in page

    switch(client, "zh")
    page = get(client, "/tiers/list/")
    assert "代理等级" in page and "Agent tiers" not in page


def test_portal_page_follows_the_language(agent_client):
    page = get(agent_client, "/portal/buy")
    assert "采购商品" in page and "可用余额" in page and "我的订单" in menu(page)

    switch(agent_client, "en")
    page = get(agent_client, "/portal/buy")
    assert "Buy products" in page and "Available balance" in page and "My price" in page
    assert "My orders" in menu(page) and "Agent portal" in menu(page)
    assert "采购商品" not in page and "可用余额" not in page and "测试点卡" in page
    assert not CJK.findall(menu(page)), _HOW

    page = get(agent_client, "/portal/my-orders/list/")
    assert "My orders" in page and "Order number" in page and "订单号" not in page


def test_home_page_follows_the_language(app, agent_client, admin, client):
    anonymous = app.test_client()
    page = get(anonymous, "/")
    assert "数字商品分销平台" in page
    switch(anonymous, "en")
    page = get(anonymous, "/")
    assert "Digital goods distribution platform" in page and "数字商品分销平台" not in page

    switch(agent_client, "en")
    page = get(agent_client, "/")
    for text in ("Available balance", "Commission pending settlement", "Frozen", "Team sales today", "Earned today",
                 "Purchase discount", "Buy products", "My statement"):
        assert text in page, text
    assert "可用余额" not in page and "待结算佣金" not in page

    switch(client, "en")
    page = get(client, "/")
    assert "Order lookup" in page and "Agent list" in page and "Import card secrets" in page
    assert "订单查询" not in page and "代理列表" not in page
    assert "Workbench" in page and "To do" in page and "Delivery success rate" in page and "工作台" not in page


def _catalog():
    with PO.open("rb") as fh:
        return read_po(fh, locale="en")


def test_english_catalog_has_no_untranslated_entries():
    catalog = _catalog()
    messages = [m for m in catalog if m.id]
    assert len(messages) > 150
    untranslated = [m.id for m in messages
                    if not m.string or (isinstance(m.string, tuple) and not all(m.string))]
    assert not untranslated, f"msgids without English ({_HOW}): {untranslated}"
    fuzzy = [m.id for m in messages if m.fuzzy]
    assert not fuzzy, f"fuzzy entries are left out of the .mo ({_HOW}): {fuzzy}"
    assert catalog.locale_identifier == "en"


def test_compiled_catalog_matches_the_po():
    """The .mo is committed (a fresh clone needs no build step): it must hold exactly what the .po says."""
    assert MO.exists(), f"{MO.relative_to(ROOT)} is missing ({_HOW})"
    with MO.open("rb") as fh:
        compiled = {m.id: m.string for m in read_mo(fh) if m.id}
    expected = {m.id: m.string for m in _catalog() if m.id and m.string}
    assert compiled == expected, f"the .mo is stale ({_HOW})"


def test_catalog_covers_every_menu_and_view_label(app):
    """New menus and views need catalog entries too: otherwise they stay Chinese in English."""
    catalog = _catalog()
    missing = set()

    def need(value, where: str) -> None:
        args = getattr(value, "_args", None)
        text = args[0] if args else value
        if isinstance(text, str) and CJK.search(text) and not (text in catalog and catalog[text].string):
            missing.add(f"{where}: {text}")

    def walk(items) -> None:
        for item in items or []:
            if item and item.name != "-":
                need(item.label or item.name, "menu")
                walk(item.childs)

    walk(app.appbuilder.menu.get_list())
    for view in app.appbuilder.baseviews:
        name = type(view).__name__
        for attr in ("list_title", "show_title", "add_title", "edit_title", "form_title"):
            need(getattr(view, attr, None), f"{name}.{attr}")
        for column, label in (getattr(view, "label_columns", None) or {}).items():
            if getattr(label, "_args", None):  # plain str labels are shown as they are (not translatable)
                need(label, f"{name}.label_columns[{column}]")
    assert not missing, f"not in the English catalog ({_HOW}): {sorted(missing)}"


def test_service_errors_follow_the_language_and_keep_their_code(client):
    """A service error's message goes through gettext where it is raised: Chinese by default (the CLI and jobs,
    outside a request, too), English after /lang/en; its code, the API contract, is the same in both."""
    body = {"order_no": "999999999999999999", "query_password": "pass-1234"}
    fresh_request_state()
    zh = client.post("/shop/api/lookup", json=body)
    assert zh.status_code == 404
    assert zh.get_json() == {"error": {"code": "not_found", "message": "订单不存在或密码错误"}}

    switch(client, "en")
    en = client.post("/shop/api/lookup", json=body)
    assert en.status_code == 404
    assert en.get_json() == {"error": {"code": "not_found", "message": "Order not found or wrong password"}}

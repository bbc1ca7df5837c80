"""Seeing risk control: the device id (self-hosted FingerprintJS on the buy, login and registration pages), the risk
dashboard (风控看板, staff only), the risk log export (CSV / XLSX, masked, formula-safe) and the growth dashboard's
flag on uplines whose many recruits never bought."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, datetime, timedelta
from urllib.parse import parse_qs

import pytest
from sqlalchemy import select, update

from app.clock import business_today, utcnow
from app.network import invites
from app.orders import service as orders
from app.risk.identity import digest
from app.risk.models import RiskDecision, RiskRule
from dashboards import components as c
from dashboards import risk as risk_dashboard
from dashboards.queries import agents as agent_queries
from dashboards.queries import risk as q
from tests import payments_helpers as h
from tests.dashboards_helpers import call_callback, filters, kpi_values, login_as, outputs
from tests.test_browser import TIMEOUT_MS, browser, live_server  # noqa: F401  (fixtures)

PHONE = "13912345678"
FP_PATH = "/static/vendor/fingerprintjs/fp.min.js"
DEVICE_JS = "/static/kameng/device.js"
FORMULA = "=HYPERLINK(\"http://evil.example/\",\"点我\")"


def _checkout(client, product, contact=PHONE, device="dev-1", ip="203.0.113.5"):
    return client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": contact,
                                                 "query_password": h.PASSWORD, "channel": "sandbox",
                                                 "device_id": device}, environ_base={"REMOTE_ADDR": ip})


def _cli(app, *args):
    """`flask kameng risk ...`; stdout and stderr apart (click 8.2+)."""
    return app.test_cli_runner().invoke(args=["kameng", "risk", *args])


def _pay(client, order_no: str) -> None:
    order = h.db.session.scalar(select(h.Order).where(h.Order.order_no == order_no))
    h.notify(client, "sandbox", order, "SBX-" + order_no)


@pytest.fixture
def traffic(app, f, client):
    """Storefront traffic through the real API: 3 allowed checkouts, 2 blocked by a blacklisted IP (whose reason
    reads like a formula), 2 held for review through a watchlisted device (paid: in the queue), and a shadow rule
    that fires on every checkout without deciding anything."""
    h.setup_sandbox()
    product = f.product(secrets=10)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["kameng", "risk", "list", "add", "--kind", "ip", "--value", "198.51.100.7",
                               "--action", "block", "--reason", FORMULA]).exit_code == 0
    assert runner.invoke(args=["kameng", "risk", "list", "add", "--kind", "device", "--value", "dev-watch-0001",
                               "--action", "review", "--reason", "可疑设备"]).exit_code == 0
    h.db.session.add(RiskRule(name="every_checkout", events="*", expression="amount > 0", action="review",
                              score=0, reason="影子：每单都命中", status="shadow"))
    h.db.session.commit()
    allowed = [_checkout(client, product, contact=f"1390000000{i}", device=f"dev-ok-{i}") for i in range(3)]
    assert [r.status_code for r in allowed] == [201] * 3
    blocked = [_checkout(client, product, ip="198.51.100.7", device="=1+2+cmd|' /C calc'!A0") for _ in range(2)]
    assert [r.get_json()["error"]["code"] for r in blocked] == ["risk_blocked"] * 2
    held = [_checkout(client, product, contact=PHONE, device="dev-watch-0001").get_json()["order_no"]
            for _ in range(2)]
    for number in held:
        _pay(client, number)
        assert h.order_state(number) == "reviewing"
    return {"product": product, "held": held, "allowed": [r.get_json()["order_no"] for r in allowed]}


# --- the device id asset -------------------------------------------------------------------------------------

def test_fingerprint_library_is_served_from_our_origin_with_its_license_and_monitoring_off(app, client):
    r = client.get(FP_PATH)
    assert r.status_code == 200 and "javascript" in r.mimetype
    head = r.get_data(as_text=True)[:400]
    assert "FingerprintJS v5.2.0" in head and "Licensed under MIT License" in head
    loader = client.get(DEVICE_JS).get_data(as_text=True)
    assert "FingerprintJS.load({monitoring: false})" in loader


def test_buy_login_and_registration_pages_carry_a_device_id_field_and_load_the_library_locally(app, f, client):
    product = f.product(secrets=1)
    top = f.tier(rank=30, may_recruit=True)
    low = f.tier(rank=10, may_recruit=False)
    inviter = f.agent(f.unique("inv"), tier_obj=top)
    code = invites.create_code(inviter.id, low.id).code
    for path in (f"/shop/buy/{product.id}", "/login/", f"/r/{code}"):
        html = client.get(path).get_data(as_text=True)
        assert re.search(r'<input type="hidden" name="device_id"', html), path
        assert f'src="{FP_PATH}"' in html and f'src="{DEVICE_JS}"' in html, path
        assert not re.search(r'<script[^>]+src="(https?:)?//', html), path  # no script from another origin


def test_a_device_id_posted_with_the_buy_form_reaches_the_order_as_its_keyed_hash(app, f, client):
    h.setup_sandbox()
    product = f.product(secrets=1)
    page = client.get(f"/shop/buy/{product.id}")
    assert page.status_code == 200
    r = client.post(f"/shop/buy/{product.id}", data={"quantity": "1", "contact": PHONE,
                                                     "query_password": h.PASSWORD, "channel": "sandbox",
                                                     "device_id": "a1b2c3d4e5f60718293a4b5c6d7e8f90"})
    assert r.status_code == 302
    order = h.db.session.scalar(select(h.Order))
    assert order.device_key == digest("device", "a1b2c3d4e5f60718293a4b5c6d7e8f90")


# --- the risk dashboard ------------------------------------------------------------------------------------

def _today_filters() -> c.Filters:
    today = business_today()
    return c.Filters(scope_id=0, start=today - timedelta(days=6), end=today)


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)  # json_array_elements / json_each
def test_dashboard_queries_count_outcomes_rules_queue_and_top_subjects(app, traffic):
    f = _today_filters()
    daily = q.decisions_by_day(f.start, f.end)
    totals = {r["outcome"]: r["count"] for r in daily}
    # 3 allowed, 2 blocked, 2 reviewed. On SQLite a refused request's decision goes with its rolled-back
    # transaction (app.risk.service._store keeps it apart on PostgreSQL only): count what was kept.
    blocks = h.db.session.query(RiskDecision).filter(RiskDecision.outcome == "block").count()
    assert blocks == (2 if h.db.engine.dialect.name == "postgresql" else blocks)
    assert totals.get("block", 0) == blocks and totals["allow"] == 3 and totals["review"] == 2
    assert sum(totals.values()) == h.db.session.query(RiskDecision).count()

    rules = {(r["kind"], r["name"]): r for r in q.rule_totals(q.rule_hits_by_day(f.start, f.end))}
    # The shadow rule fired on every checkout the lists let through, counted apart; lists by kind, not by value.
    assert rules[("rule", "every_checkout")]["hits"] == 0
    assert rules[("rule", "every_checkout")]["shadow_hits"] == 5
    if blocks:
        assert rules[("list", "ip")]["hits"] == 2 and rules[("list", "ip")]["action"] == "block"
    assert rules[("list", "device")]["hits"] == 2 and rules[("list", "device")]["action"] == "review"
    assert q.rule_hits_by_day(f.start, f.end, event="withdrawal") == []

    queue = q.review_queue()
    assert queue["size"] == 2 and queue["over_sla"] == 0 and queue["ages"][0] == {"label": "<1h", "count": 2}
    later = q.review_queue(now=utcnow() + timedelta(hours=5))
    assert later["over_sla"] == 2 and later["oldest_minutes"] >= 299
    assert {a["label"]: a["count"] for a in later["ages"]}["4-12h"] == 2

    ips = {r["value"]: r for r in q.top_subjects("ip", f.start, f.end)}
    assert "198.51.100.7" not in ips and all("*" in v for v in ips)
    assert sum(r["blocked"] for r in ips.values()) == blocks and sum(r["reviewed"] for r in ips.values()) == 2
    devices = {r["value"]: r for r in q.top_subjects("device", f.start, f.end)}
    assert all("dev-watch-0001" != v and "*" in v for v in devices)
    assert sum(r["reviewed"] for r in devices.values()) == 2

    out = risk_dashboard.render(f)
    note, kpis = out[0], {card.id: card.children[1].children for card in out[1]}
    assert kpis["kpi-block"] == str(blocks) and kpis["kpi-queue"] == "2" and "30 分钟" in note
    assert [t["name"] for t in out[2]["data"]] == ["放行", "人工审核", "拦截"]
    assert any(r["name"] == "every_checkout" and r["shadow_hits"] == 5 for r in out[6])


def test_dashboard_callback_end_to_end_for_manager_and_admin_refused_to_support_and_agents(app, f, traffic):
    today = business_today()
    values = {**filters(today - timedelta(days=6), today, granularity="day"), "rk-event.value": None}
    for role in ("Manager", "Admin"):
        client, _user = login_as(app, f, role=role)
        assert client.get("/analytics/risk/").status_code == 200
        out = outputs(call_callback(client, "risk", "rk-kpis.children", values))
        assert kpi_values(out["rk-kpis.children"])["kpi-block"] == "2"
        assert out["rk-ips.data"][0]["blocked"] == 2
        # filtered by event type
        only = outputs(call_callback(client, "risk", "rk-kpis.children",
                                     {**values, "rk-event.value": "withdrawal"}))
        assert kpi_values(only["rk-kpis.children"])["kpi-decisions"] == "0"
        bad = call_callback(client, "risk", "rk-kpis.children", {**values, "rk-event.value": "nope"})
        assert bad.status_code == 400
    # The log download on the dashboard: the same rows as the CLI, masked and formula-safe.
    download = outputs(call_callback(client, "risk", "rk-log-download.data", {
        "rk-log-export.n_clicks": 1, "f-range.start_date": values["f-range.start_date"],
        "f-range.end_date": values["f-range.end_date"]}, changed=["rk-log-export.n_clicks"]))["rk-log-download.data"]
    assert download["filename"].startswith("risk-log-") and PHONE not in download["content"]
    assert ["'" + FORMULA] * 2 == [r["原因"] for r in _csv_rows(download["content"]) if r["结果"] == "block"]

    # Support and agents: no page, no Dash route (the guard answers before any callback runs).
    support, _u = login_as(app, f, role="Support")
    agent = f.agent(f.unique("agt"))
    agent_client = app.test_client()
    f.login(agent_client, agent.user.username)
    for refused in (support, agent_client):
        assert refused.get("/analytics/risk/").status_code == 403
        assert refused.get("/dashboards/risk/_dash-dependencies").status_code == 403
        assert refused.post("/dashboards/risk/_dash-update-component", json={}).status_code == 403
    anonymous = app.test_client()
    assert anonymous.post("/dashboards/risk/_dash-update-component", json={}).status_code == 302


def test_dashboard_refuses_a_viewer_whose_scope_is_a_branch(app, f):
    """Even if a role were given the page by mistake, the callback serves only the platform scope."""
    from app.errors import Forbidden

    agent = f.agent(f.unique("agt"))
    client = app.test_client()
    f.login(client, agent.user.username)
    with app.test_request_context():
        from flask import g

        g.user = agent.user
        with pytest.raises(Forbidden):
            risk_dashboard.staff_filters(start=None, end=None)


# --- the risk log export -----------------------------------------------------------------------------------

def _csv_rows(text: str) -> list[dict]:
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text[1:])))


def test_csv_export_has_every_decision_masked_and_formula_safe(app, traffic):
    result = _cli(app, "export", "--format", "csv")
    assert result.exit_code == 0, result.output
    text = result.stdout
    rows = _csv_rows(text)
    assert len(rows) == h.db.session.query(RiskDecision).count()
    assert PHONE not in text and "198.51.100.7" not in text and "dev-watch-0001" not in text
    blocked = [r for r in rows if r["结果"] == "block"]
    assert len(blocked) == 2
    for r in blocked:
        assert r["原因"] == "'" + FORMULA  # a reason that reads as a formula is text
        assert r["对象 device（脱敏）"].startswith("'=")  # so is a device id someone made look like one
        assert r["决定环节"] == "名单" and r["事件名称"] == "商城下单"
    held = [r for r in rows if r["订单号"] in traffic["held"]]
    assert held and all(r["对象 contact（脱敏）"] == "1*********8" for r in held if r["对象 contact（脱敏）"])
    shadow = [r for r in rows if "every_checkout" in r["影子规则（仅记录）"]]
    assert len(shadow) == 5 and all("every_checkout" not in r["命中规则"] for r in shadow)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$", r["时间（业务时区）"]) for r in rows)
    assert all(not str(v).startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for v in r.values())


def test_xlsx_export_to_stdout_and_to_a_file(app, traffic, tmp_path):
    from openpyxl import load_workbook

    result = _cli(app, "export", "--format", "xlsx")
    assert result.exit_code == 0
    data = result.stdout_bytes
    assert data[:2] == b"PK"
    target = tmp_path / "risk.xlsx"
    assert _cli(app, "export", "--format", "xlsx", "--output", str(target)).exit_code == 0
    for source in (io.BytesIO(data), target):
        sheet = load_workbook(source, read_only=True).worksheets[0]
        rows = list(sheet.iter_rows(values_only=True))
        header = list(rows[0])
        assert header[header.index("原因")] == "原因"
        body = rows[1:]
        assert len(body) == h.db.session.query(RiskDecision).count()
        reasons = [r[header.index("原因")] for r in body if r[header.index("结果")] == "block"]
        assert reasons == ["'" + FORMULA] * 2
        flat = json.dumps(rows, ensure_ascii=False, default=str)
        assert PHONE not in flat and "198.51.100.7" not in flat
    # every cell is a value, none a formula
    book = load_workbook(target)
    assert all(cell.data_type != "f" for row in book.worksheets[0].iter_rows() for cell in row)


def test_export_range_is_business_days_and_bad_arguments_are_clear_errors(app, f, client, tmp_path):
    h.setup_sandbox()
    product = f.product(secrets=3)
    for i in range(3):
        assert _checkout(client, product, contact=f"1390000000{i}").status_code == 201
    ids = list(h.db.session.scalars(select(RiskDecision.id).order_by(RiskDecision.id)))
    # 2026-03-01 15:59 UTC = 23:59 China; 16:00 UTC = Mar 2 00:00 China; Mar 3 in the afternoon.
    for decision_id, at in zip(ids, (datetime(2026, 3, 1, 15, 59), datetime(2026, 3, 1, 16, 0),
                                     datetime(2026, 3, 3, 6, 0)), strict=True):
        h.db.session.execute(update(RiskDecision).where(RiskDecision.id == decision_id).values(created_at=at))
    h.db.session.commit()

    def exported(*args) -> list[str]:
        result = _cli(app, "export", "--format", "csv", *args)
        assert result.exit_code == 0, result.output
        return [r["决策编号"] for r in _csv_rows(result.stdout)]

    assert exported("--since", "2026-03-02") == [str(ids[1]), str(ids[2])]
    assert exported("--until", "2026-03-01") == [str(ids[0])]
    assert exported("--since", "2026-03-02", "--until", "2026-03-02") == [str(ids[1])]
    assert exported("--since", "2026-04-01") == []

    target = tmp_path / "out.csv"
    assert _cli(app, "export", "--format", "csv", "--output", str(target), "--since", "2026-03-03").exit_code == 0
    assert [r["决策编号"] for r in _csv_rows(target.read_text(encoding="utf-8"))] == [str(ids[2])]

    for args, words in ((["--since", "2026-13-01"], "--since"), (["--until", "yesterday"], "--until"),
                        (["--since", "2026-03-05", "--until", "2026-03-01"], "晚于结束日期")):
        result = _cli(app, "export", "--format", "csv", *args)
        assert result.exit_code != 0 and words in result.stderr and result.stdout == ""
    result = _cli(app, "export", "--format", "pdf")
    assert result.exit_code == 2 and "pdf" in result.stderr


# --- growth dashboard: recruits who never bought ---------------------------------------------------------

@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_growth_dashboard_flags_uplines_whose_many_recruits_never_bought(app, f):
    top = f.tier(f.unique("总代"), rank=30)
    low = f.tier(f.unique("普代"), rank=10)
    root = f.agent(f.unique("root"), tier_obj=top)
    farm = f.agent(f.unique("farm"), parent=root, tier_obj=top)  # 6 recruits, none bought
    busy = f.agent(f.unique("busy"), parent=root, tier_obj=top)  # 5 recruits, one bought
    few = f.agent(f.unique("few"), tier_obj=top)  # 4 recruits: under the threshold; another branch
    farmed = [f.agent(f.unique("f"), parent=farm, tier_obj=low, with_user=False) for _ in range(6)]
    busy_kids = [f.agent(f.unique("b"), parent=busy, tier_obj=low, with_user=False) for _ in range(5)]
    for _ in range(4):
        f.agent(f.unique("w"), parent=few, tier_obj=low, with_user=False)
    product = f.product(face_price=1000, cost=800, secrets=2)
    f.fund(busy_kids[0], 10_000)
    f.fund(farmed[0], 10_000)
    orders.place_wallet_order(busy_kids[0].id, product.id, 1)
    h.db.session.commit()
    today = business_today()
    start = today - timedelta(days=6)

    flagged = agent_queries.idle_recruiters(0, start, today)
    assert [(r["name"], r["recruits"]) for r in flagged] == [(farm.name, 6)]
    assert flagged[0]["last_joined"] == today
    assert agent_queries.idle_recruiters(root.id, start, today)[0]["agent_id"] == farm.id
    assert agent_queries.idle_recruiters(few.id, start, today) == []
    assert agent_queries.idle_recruiters(0, start, today, min_recruits=4)[-1]["name"] == few.name
    # Recruits outside the range do not count.
    assert agent_queries.idle_recruiters(0, today - timedelta(days=60), today - timedelta(days=30)) == []
    # Once one of the farm's recruits buys, the farm is no longer flagged.
    orders.place_wallet_order(farmed[0].id, product.id, 1)
    h.db.session.commit()
    assert agent_queries.idle_recruiters(0, start, today) == []


def test_growth_dashboard_shows_the_flag_through_its_callback_scoped_to_the_viewer(app, f):
    top = f.tier(f.unique("总代"), rank=30, may_recruit=True)
    low = f.tier(f.unique("普代"), rank=10)
    root = f.agent(f.unique("root"), tier_obj=top)
    farm = f.agent(f.unique("farm"), parent=root, tier_obj=top)
    other = f.agent(f.unique("other"), tier_obj=top)
    for _ in range(5):
        f.agent(f.unique("f"), parent=farm, tier_obj=low, with_user=False)
    today = business_today()
    values = filters(today - timedelta(days=6), today, granularity="day")

    manager, _u = login_as(app, f, role="Manager")
    out = outputs(call_callback(manager, "agents", "ag-idle.data", values))
    assert [(r["name"], r["recruits"]) for r in out["ag-idle.data"]] == [(farm.name, 5)]
    assert "5" in out["ag-idle-note.children"]

    root_client = app.test_client()
    f.login(root_client, root.user.username)
    assert [r["name"] for r in outputs(call_callback(root_client, "agents", "ag-idle.data", values))
            ["ag-idle.data"]] == [farm.name]
    other_client = app.test_client()
    f.login(other_client, other.user.username)
    out = outputs(call_callback(other_client, "agents", "ag-idle.data", values))
    assert out["ag-idle.data"] == [] and out["ag-idle-note.children"] == ""


# --- the real browser ------------------------------------------------------------------------------------

@pytest.mark.browser
def test_buy_page_makes_no_request_to_another_origin_and_its_device_id_reaches_the_order(  # noqa: F811
        app, db, f, live_server, browser):  # noqa: F811
    from playwright.sync_api import expect

    base = live_server
    h.setup_sandbox()
    product = f.product(name="网易一卡通 50元", face_price=5000, cost=4200, secrets=1)
    top = f.tier(rank=30, may_recruit=True)
    low = f.tier(rank=10, may_recruit=False)
    code = invites.create_code(f.agent(f.unique("inv"), tier_obj=top).id, low.id).code
    product_id = product.id

    ctx = browser.new_context(locale="zh-CN")
    ctx.set_default_timeout(TIMEOUT_MS)
    seen, foreign, posted = [], [], []

    def watch(route):  # every request of the page passes here: another origin's is recorded and refused
        url = route.request.url
        seen.append(url)
        if not url.startswith(base + "/"):
            foreign.append(url)
            return route.abort()
        if route.request.method == "POST" and "/shop/buy/" in url:
            posted.append(parse_qs(route.request.post_data or ""))
        return route.continue_()

    ctx.route("**/*", watch)
    page = ctx.new_page()
    page.goto(f"{base}/shop/buy/{product_id}")
    # A locator wait, not wait_for_function: a string predicate is eval'd in the page, which the CSP refuses.
    expect(page.locator("#device_id")).not_to_have_value("", timeout=15_000)
    visitor_id = page.evaluate(
        "FingerprintJS.load({monitoring: false}).then(a => a.get()).then(r => r.visitorId)")
    assert re.fullmatch(r"[0-9a-f]{32}", visitor_id)
    assert page.locator("#device_id").input_value() == visitor_id
    page.fill("#contact", PHONE)
    page.fill("#query_password", h.PASSWORD)
    page.select_option("#channel", "sandbox")
    with page.expect_navigation(url=re.compile(r"/pay/sandbox/cashier/\d+$")):
        page.click("#checkout button[type=submit]")
    order_no = page.locator("#order-no").inner_text().strip()
    assert posted and posted[0]["device_id"] == [visitor_id]
    assert any(u.endswith(FP_PATH) for u in seen) and any(u.endswith(DEVICE_JS) for u in seen)

    # The login and registration pages fill the field too, from our origin only.
    for path in ("/login/", f"/r/{code}"):
        page.goto(f"{base}{path}")
        expect(page.locator("input[name=device_id]")).not_to_have_value("", timeout=15_000)
        assert page.locator("input[name=device_id]").input_value() == visitor_id
    ctx.close()
    assert foreign == []

    db.session.expire_all()
    order = db.session.scalar(select(h.Order).where(h.Order.order_no == order_no))
    assert order.device_key == digest("device", visitor_id)


def test_parse_day_rejects_impossible_dates():
    from app.errors import ValidationError
    from app.risk import export

    assert export.parse_day("2026-02-28", "--since") == date(2026, 2, 28)
    assert export.parse_day(None, "--since") is None
    with pytest.raises(ValidationError):
        export.parse_day("2026-02-30", "--since")
    assert export.safe_cell("-1") == "'-1" and export.safe_cell("\tx") == "'\tx" and export.safe_cell(5) == 5
    assert export.safe_cell("@SUM(A1)") == "'@SUM(A1)" and export.safe_cell("abc") == "abc"

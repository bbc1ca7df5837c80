"""Agent growth dashboard (代理增长): figures against hand-computed answers, scope, permissions, CSV."""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

import pytest

from app.analytics.models import ActiveDaily, AgentDaily, RetentionMonthly
from dashboards.queries import agents as q

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)


def _at(a, when: datetime) -> None:
    """Backdate an agent's creation (naive UTC)."""
    a.created_at = when


@pytest.fixture
def tree(app, db, f):
    """Two branches with known join instants (UTC; China is UTC+8) and tiers:

        A (总代, 2026-01-05)            X (总代, 2026-01-10)
        ├── B (普代, 2026-01-20)        └── Y (普代, 2026-02-03)
        │   ├── D (普代, 2026-02-03 17:00 UTC = 2026-02-04 01:00 China)
        │   └── E (总代, 2026-03-10)
        └── C (普代, 2026-02-03)
    """
    top = f.tier("总代", rank=30)
    low = f.tier("普代", rank=10)
    a = f.agent("A", tier_obj=top)
    b = f.agent("B", parent=a, tier_obj=low)
    c = f.agent("C", parent=a, tier_obj=low, with_user=False)
    d = f.agent("D", parent=b, tier_obj=low, with_user=False)
    e = f.agent("E", parent=b, tier_obj=top, with_user=False)
    x = f.agent("X", tier_obj=top)
    y = f.agent("Y", parent=x, tier_obj=low, with_user=False)
    _at(a, datetime(2026, 1, 5, 2))
    _at(b, datetime(2026, 1, 20, 2))
    _at(c, datetime(2026, 2, 3, 2))
    _at(d, datetime(2026, 2, 3, 17))
    _at(e, datetime(2026, 3, 10, 2))
    _at(x, datetime(2026, 1, 10, 2))
    _at(y, datetime(2026, 2, 3, 3))
    # Buying days (rollup_agent_daily deltas). C's only order was refunded the same day: net zero, not active.
    buying = [(a, date(2026, 1, 15), 1), (a, date(2026, 3, 25), 1), (a, date(2026, 3, 31), 2),
              (b, date(2026, 3, 5), 1), (c, date(2026, 3, 31), 1), (c, date(2026, 3, 31), -1),
              (d, date(2026, 2, 10), 1), (x, date(2026, 3, 30), 1), (y, date(2026, 2, 20), 1),
              (y, date(2026, 3, 2), 1)]
    for agent, day, orders in buying:
        db.session.add(AgentDaily(day=day, agent_id=agent.id, orders=orders, gmv=1000 * orders))
    db.session.add_all(_activity_rows(buying))
    db.session.commit()
    return {"A": a, "B": b, "C": c, "D": d, "E": e, "X": x, "Y": y, "top": top, "low": low}


def _activity_rows(buying: list) -> list:
    """The rollup_active_daily and rollup_retention_monthly rows those buying days make, by their definition: an
    agent with orders summing above zero on a day (in a month) counts once at 0 and on its path (the agent itself
    only for days), with its tier, under the China month it joined."""
    day_net, month_net = defaultdict(int), defaultdict(int)
    for agent, day, orders in buying:
        day_net[(agent, day)] += orders
        month_net[(agent, day.replace(day=1))] += orders
    rows = []
    for (agent, day), n in day_net.items():
        if n > 0:
            rows += [ActiveDaily(scope_id=s, day=day, tier_id=agent.tier_id, agents=1) for s in _scopes(agent)]
    for (agent, month), n in month_net.items():
        if n > 0:
            cohort = (agent.created_at + timedelta(hours=8)).date().replace(day=1)
            rows += [RetentionMonthly(scope_id=s, cohort=cohort, month=month, tier_id=agent.tier_id, agents=1)
                     for s in _scopes(agent) if s != agent.id]
    return rows


def _scopes(agent) -> list[int]:
    return [0] + [int(x) for x in agent.path.strip("/").split("/")]


Q1 = (date(2026, 1, 1), date(2026, 3, 31))


def _days(rows):
    return [(r["day"].isoformat(), r["tier"], r["count"]) for r in rows]


@BOTH
def test_new_agents_per_day_by_tier(tree):
    assert _days(q.new_agents(0, *Q1)) == [
        ("2026-01-05", "总代", 1), ("2026-01-10", "总代", 1), ("2026-01-20", "普代", 1),
        ("2026-02-03", "普代", 2), ("2026-02-04", "普代", 1), ("2026-03-10", "总代", 1)]
    # The branch of A: its downline only (A itself joined nothing; X and Y are another branch).
    assert _days(q.new_agents(tree["A"].id, *Q1)) == [
        ("2026-01-20", "普代", 1), ("2026-02-03", "普代", 1), ("2026-02-04", "普代", 1), ("2026-03-10", "总代", 1)]
    assert _days(q.new_agents(0, *Q1, tier_id=tree["top"].id)) == [
        ("2026-01-05", "总代", 1), ("2026-01-10", "总代", 1), ("2026-03-10", "总代", 1)]
    # D joined at 01:00 China time on Feb 4: not in a range ending Feb 3.
    assert _days(q.new_agents(0, date(2026, 2, 3), date(2026, 2, 3))) == [("2026-02-03", "普代", 2)]
    assert q.new_agents(999999, *Q1) == []


@BOTH
def test_active_agents_last_7_and_30_days(tree):
    # 7 days to Mar 31 = Mar 25..31: A, X (C's day nets to zero). 30 days = Mar 2..31: A, B, X, Y.
    assert q.active_agents(0, date(2026, 3, 31)) == {7: 2, 30: 4}
    assert q.active_agents(tree["A"].id, date(2026, 3, 31)) == {7: 1, 30: 2}
    assert q.active_agents(tree["X"].id, date(2026, 3, 31)) == {7: 1, 30: 2}
    assert q.active_agents(0, date(2026, 3, 31), tier_id=tree["low"].id) == {7: 0, 30: 2}
    assert [(r["day"].day, r["agents"]) for r in q.daily_active(0, date(2026, 3, 29), date(2026, 3, 31))] == [
        (29, 0), (30, 1), (31, 1)]
    assert [r["agents"] for r in q.daily_active(tree["B"].id, date(2026, 3, 29), date(2026, 3, 31))] == [0, 0, 0]


@BOTH
def test_activity_in_one_pass_equals_the_single_queries(tree):
    for scope in (0, tree["A"].id, tree["X"].id):
        for start, end in (Q1, (date(2026, 3, 29), date(2026, 3, 31)), (date(2026, 2, 1), date(2026, 3, 5))):
            for tier in (None, tree["low"].id):
                assert q.activity(scope, start, end, tier) == {"daily": q.daily_active(scope, start, end, tier),
                                                               "active": q.active_agents(scope, end, tier)}


@BOTH
def test_top_recruiters(tree):
    t = tree
    assert [(r["name"], r["tier"], r["recruits"]) for r in q.top_recruiters(0, *Q1)] == [
        ("A", "总代", 2), ("B", "普代", 2), ("X", "总代", 1)]
    # In B's branch only B recruited; A (B's parent, another scope) never shows although B joined in the range.
    assert [(r["agent_id"], r["recruits"]) for r in q.top_recruiters(t["B"].id, *Q1)] == [(t["B"].id, 2)]
    assert [(r["name"], r["recruits"]) for r in q.top_recruiters(0, date(2026, 2, 1), date(2026, 2, 28))] == [
        ("A", 1), ("B", 1), ("X", 1)]
    assert [(r["name"], r["recruits"]) for r in q.top_recruiters(0, *Q1, tier_id=t["top"].id)] == [("B", 1)]
    assert [r["name"] for r in q.top_recruiters(0, *Q1, limit=1)] == ["A"]


@BOTH
def test_tree_depth_and_size(tree):
    levels = lambda rows: [(r["level"], r["agents"]) for r in rows]  # noqa: E731
    assert levels(q.tree_levels(0)) == [(0, 2), (1, 3), (2, 2)]
    assert levels(q.tree_levels(tree["A"].id)) == [(0, 1), (1, 2), (2, 2)]
    assert levels(q.tree_levels(tree["B"].id)) == [(0, 1), (1, 2)]
    assert levels(q.tree_levels(0, as_of=date(2026, 2, 3))) == [(0, 2), (1, 3)]  # D joined Feb 4 China time
    assert q.tree_summary(0) == {"agents": 7, "depth": 2}
    assert q.tree_summary(tree["X"].id) == {"agents": 2, "depth": 1}
    assert q.tree_summary(0, as_of=date(2026, 1, 31)) == {"agents": 3, "depth": 1}


@BOTH
def test_retention_by_cohort_month(tree):
    def table(rows):
        return [(r["cohort"], r["size"], [(m["month"], m["active"], m["pct"]) for m in r["months"]]) for r in rows]

    # Jan: A, B, X (A bought in Jan; A, B, X in Mar). Feb: C, D, Y (D, Y in Feb; Y in Mar; C nets zero). Mar: E.
    assert table(q.retention(0, *Q1)) == [
        ("2026-01", 3, [("2026-01", 1, 33.3), ("2026-02", 0, 0.0), ("2026-03", 3, 100.0)]),
        ("2026-02", 3, [("2026-02", 2, 66.7), ("2026-03", 1, 33.3)]),
        ("2026-03", 1, [("2026-03", 0, 0.0)])]
    # A's branch without A: Jan: B; Feb: C, D; Mar: E.
    assert table(q.retention(tree["A"].id, *Q1)) == [
        ("2026-01", 1, [("2026-01", 0, 0.0), ("2026-02", 0, 0.0), ("2026-03", 1, 100.0)]),
        ("2026-02", 2, [("2026-02", 1, 50.0), ("2026-03", 0, 0.0)]),
        ("2026-03", 1, [("2026-03", 0, 0.0)])]
    # A range starting mid-February still takes February's whole cohort.
    assert [r["cohort"] for r in q.retention(0, date(2026, 2, 15), date(2026, 2, 28))] == ["2026-02"]
    # A range ending inside March counts March's purchases up to its last day only (B on Mar 5, Y on Mar 2;
    # A and X bought later), and cohorts of agents who joined by then (E joined Mar 10).
    assert table(q.retention(0, date(2026, 1, 1), date(2026, 3, 8))) == [
        ("2026-01", 3, [("2026-01", 1, 33.3), ("2026-02", 0, 0.0), ("2026-03", 1, 33.3)]),
        ("2026-02", 3, [("2026-02", 2, 66.7), ("2026-03", 1, 33.3)])]
    assert table(q.retention(tree["A"].id, date(2026, 1, 1), date(2026, 3, 8)))[0] == (
        "2026-01", 1, [("2026-01", 0, 0.0), ("2026-02", 0, 0.0), ("2026-03", 1, 100.0)])
    # a tier: 普代 cohorts are B (Jan), C, D, Y (Feb), whoever of them bought
    assert table(q.retention(0, *Q1, tier_id=tree["low"].id)) == [
        ("2026-01", 1, [("2026-01", 0, 0.0), ("2026-02", 0, 0.0), ("2026-03", 1, 100.0)]),
        ("2026-02", 3, [("2026-02", 2, 66.7), ("2026-03", 1, 33.3)])]


@BOTH
def test_bad_range_is_a_validation_error(app):
    from app.errors import ValidationError

    with pytest.raises(ValidationError):
        q.new_agents(0, date(2026, 3, 1), date(2026, 2, 1))


# ------------------------------------------------------------------------------------------ the dashboard itself
def _growth(client, **kw):
    from tests.dashboards_helpers import call_callback, filters, outputs

    return outputs(call_callback(client, "agents", "ag-kpis.children", filters(*Q1, granularity="month", **kw)))


def test_manager_sees_every_figure(app, f, tree):
    from tests.dashboards_helpers import kpi_values, login_as

    client, _user = login_as(app, f, "Manager")
    out = _growth(client)
    assert kpi_values(out["ag-kpis.children"]) == {"kpi-new": "7", "kpi-active-7": "2", "kpi-active-30": "4",
                                                   "kpi-size": "7", "kpi-depth": "2"}
    assert [(r["period"], r["tier"], r["count"]) for r in out["ag-new-table.data"]] == [
        ("2026-01", "总代", 2), ("2026-01", "普代", 1), ("2026-02", "普代", 3), ("2026-03", "总代", 1)]
    assert [(r["rank"], r["name"], r["tier"], r["recruits"]) for r in out["ag-recruiters.data"]] == [
        (1, "A", "总代", 2), (2, "B", "普代", 2), (3, "X", "总代", 1)]
    assert [(r["level"], r["agents"]) for r in out["ag-levels-table.data"]] == [(0, 2), (1, 3), (2, 2)]
    assert out["ag-retention.data"] == [
        {"cohort": "2026-01", "size": 3, "m0": "33.3% (1)", "m1": "0.0% (0)", "m2": "100.0% (3)"},
        {"cohort": "2026-02", "size": 3, "m0": "66.7% (2)", "m1": "33.3% (1)"},
        {"cohort": "2026-03", "size": 1, "m0": "0.0% (0)"}]
    assert [c["id"] for c in out["ag-retention.columns"]] == ["cohort", "size", "m0", "m1", "m2"]
    new_fig = out["ag-new.figure"]
    assert {t["name"]: t["y"] for t in new_fig["data"]} == {"总代": [2, 0, 1], "普代": [1, 3, 0]}
    # A manager may look at one branch.
    branch = _growth(client, branch=tree["B"].id)
    assert kpi_values(branch["ag-kpis.children"])["kpi-new"] == "2"  # D and E


def test_agent_sees_only_its_branch_even_when_asking_for_another(app, f, tree):
    from tests.dashboards_helpers import agent_client, call_callback, filters, kpi_values, texts

    client = agent_client(app, f, tree["A"])
    out = _growth(client)
    assert kpi_values(out["ag-kpis.children"]) == {"kpi-new": "4", "kpi-active-7": "1", "kpi-active-30": "2",
                                                   "kpi-size": "5", "kpi-depth": "2"}
    assert [(r["name"], r["recruits"]) for r in out["ag-recruiters.data"]] == [("A", 2), ("B", 2)]
    everything = texts(out)
    assert '"X"' not in everything and '"Y"' not in everything
    # Its own downline's branch is allowed; another branch (X) is refused, whatever the browser sends.
    assert kpi_values(_growth(client, branch=tree["B"].id)["ag-kpis.children"])["kpi-size"] == "3"
    refused = call_callback(client, "agents", "ag-kpis.children", filters(*Q1, branch=tree["X"].id))
    assert refused.status_code == 403 and "X" not in refused.get_data(as_text=True)
    # The branch dropdown offers only its own downline.
    options = call_callback(client, "agents", "f-branch.options", {"f-branch.search_value": ""})
    assert sorted(o["label"] for o in options.get_json()["response"]["f-branch"]["options"]) == [
        "A", "B", "C", "D", "E"]


def test_access_anonymous_support_and_menu(app, f, tree):
    from tests.dashboards_helpers import login_as

    anonymous = app.test_client()
    for url in ("/analytics/agents/", "/dashboards/agents/", "/dashboards/agents/_dash-layout"):
        r = anonymous.get(url)
        assert r.status_code == 302 and "/login/" in r.headers["Location"], url
    support, _user = login_as(app, f, "Support")
    for url in ("/analytics/agents/", "/dashboards/agents/", "/dashboards/agents/_dash-layout"):
        assert support.get(url).status_code == 403, url
    manager, _user = login_as(app, f, "Manager")
    page = manager.get("/analytics/agents/").get_data(as_text=True)
    assert "代理增长" in page and "用户画像" in page and "资金流向" in page
    assert 'src="/dashboards/agents/"' in page
    from tests.dashboards_helpers import agent_client

    agent_page = agent_client(app, f, tree["A"]).get("/analytics/agents/")
    assert agent_page.status_code == 200 and "资金流向" in agent_page.get_data(as_text=True)


def test_csv_export_of_the_recruiters_table(app, f, tree):
    from tests.dashboards_helpers import call_callback, login_as, outputs, texts

    client, _user = login_as(app, f, "Manager")
    out = _growth(client)
    layout = texts(client.get("/dashboards/agents/_dash-layout").get_json())
    assert "推荐排行" in layout and "导出 CSV" in layout
    columns = [{"id": "rank", "name": "排名"}, {"id": "name", "name": "代理"}, {"id": "tier", "name": "等级"},
               {"id": "recruits", "name": "新增直推"}]
    download = outputs(call_callback(client, "agents", "ag-recruiters-download.data", {
        "ag-recruiters-export.n_clicks": 1, "ag-recruiters.data": out["ag-recruiters.data"],
        "ag-recruiters.columns": columns}, changed=["ag-recruiters-export.n_clicks"]))["ag-recruiters-download.data"]
    assert download["filename"] == "top-recruiters.csv"
    assert download["content"].lstrip("\ufeff").splitlines() == ["排名,代理,等级,新增直推", "1,A,总代,2", "2,B,普代,2",
                                                                 "3,X,总代,1"]


def test_real_purchases_make_agents_active_in_their_branch_only(app, f):
    """Wallet purchases fill rollup_agent_daily on delivery; a refund takes the day back out."""
    from app.clock import to_local, utcnow
    from app.orders import service as orders
    from app.payments import service as payments
    from tests.dashboards_helpers import agent_client, call_callback, filters, kpi_values, login_as, outputs

    tier = f.tier("金牌", discount_bp=9500)
    a = f.agent("RA", tier_obj=tier, balance=100000)
    b = f.agent("RB", parent=a, tier_obj=tier, balance=100000)
    x = f.agent("RX", tier_obj=tier, balance=100000)
    product = f.product(face_price=1000, cost=800, secrets=5)
    orders.place_wallet_order(a.id, product.id, 1)
    first_b = orders.place_wallet_order(b.id, product.id, 2).id
    second_b = orders.place_wallet_order(b.id, product.id, 1).id
    today = to_local(utcnow()).date()
    month = filters(today - timedelta(days=29), today)

    def kpis(client, values=month):
        out = outputs(call_callback(client, "agents", "ag-kpis.children", values))
        return kpi_values(out["ag-kpis.children"]), out

    manager, _user = login_as(app, f, "Manager")
    figures, out = kpis(manager)
    assert figures == {"kpi-new": "3", "kpi-active-7": "2", "kpi-active-30": "2", "kpi-size": "3", "kpi-depth": "1"}
    assert out["ag-active.figure"]["data"][0]["y"][-1] == 2  # today: A and B bought
    assert kpis(agent_client(app, f, a))[0] == {"kpi-new": "1", "kpi-active-7": "2", "kpi-active-30": "2",
                                                "kpi-size": "2", "kpi-depth": "1"}
    assert kpis(agent_client(app, f, x))[0] == {"kpi-new": "0", "kpi-active-7": "0", "kpi-active-30": "0",
                                                "kpi-size": "1", "kpi-depth": "0"}
    # Both of B's orders refunded: B bought nothing that counts any more.
    payments.refund_order(first_b, "测试退款", None)
    payments.refund_order(second_b, "测试退款", None)
    assert kpis(agent_client(app, f, a))[0]["kpi-active-7"] == "1"
    assert kpis(manager)[0]["kpi-active-30"] == "1"


def test_an_agents_display_name_that_reads_as_a_formula_is_exported_as_text(app, f, db, tree):
    """The confirmed case: an agent named '=HYPERLINK(...)' in the recruiters table, exported by a manager."""
    import csv
    import io

    from sqlalchemy import update

    from app.agents.models import Agent
    from tests.dashboards_helpers import call_callback, login_as, outputs

    formula = '=HYPERLINK("http://evil.example/","点我")'
    db.session.execute(update(Agent).where(Agent.name == "A").values(name=formula))
    db.session.commit()
    client, _user = login_as(app, f, "Manager")
    out = _growth(client)
    assert formula in [row["name"] for row in out["ag-recruiters.data"]]
    columns = [{"id": "rank", "name": "排名"}, {"id": "name", "name": "代理"}]
    download = outputs(call_callback(client, "agents", "ag-recruiters-download.data", {
        "ag-recruiters-export.n_clicks": 1, "ag-recruiters.data": out["ag-recruiters.data"],
        "ag-recruiters.columns": columns}, changed=["ag-recruiters-export.n_clicks"]))["ag-recruiters-download.data"]
    names = [row[1] for row in csv.reader(io.StringIO(download["content"].lstrip("\ufeff")))][1:]
    assert "'" + formula in names and formula not in names

"""Analytics rollups: deltas written on delivery / refund through the real purchase and payment paths, summed per
scope against hand-computed figures; refunds on the original day; a rejected dispute counted once; incremental
rows equal to a rebuild; compaction keeps the sums; money flows folded once and matching the ledger; active agents
and retention counted once per agent and day (month), also when one agent's deliveries land at the same moment."""
from __future__ import annotations

import threading
from collections import defaultdict
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select, text

from app.agents.models import Agent
from app.analytics import service as rollups
from app.analytics.models import AgentDaily, MoneyDaily, ProfileDaily, SalesDaily
from app.clock import to_local, utcnow
from app.extensions import db as _db
from app.network import realname, settlement, withdrawals
from app.network.models import Withdrawal
from app.orders import service as orders
from app.orders.models import Order
from app.payments import disputes
from app.payments import service as payments
from app.suppliers import recharge
from tests import payments_helpers as ph
from tests import supplier_sim_helpers
from tests.network_helpers import bank_card, id_number, idv_provider, payout_bank
from tests.openapi_helpers import new_key
from tests.recharge_helpers import World as RechargeWorld
from tests.recharge_helpers import order as recharge_order
from tests.recharge_helpers import place_api
from tests.supplier_sim_helpers import sim_supplier

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
PG = pytest.mark.parametrize("app", ["postgresql"], indirect=True)
supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture


def today() -> date:
    return to_local(utcnow()).date()


def grouped(table: str) -> dict[tuple, tuple]:
    """The table's sums per key (what every reader sees), leaving out keys that sum to all zeros."""
    t = rollups.TABLES[table]
    _db.session.rollback()
    rows = _db.session.execute(text(
        f"SELECT {', '.join(t.key)}, {', '.join(f'sum({c})' for c in t.sums)} FROM {t.name}"
        f" GROUP BY {', '.join(t.key)}")).all()
    out = {}
    for row in rows:
        key = tuple(str(v) if isinstance(v, date) else v for v in row[:len(t.key)])
        sums = tuple(int(v) for v in row[len(t.key):])
        if any(sums):
            out[key] = sums
    return out


def counts(table: str) -> dict[tuple, int]:
    """grouped() of a table with one summed column (agents): {key: n}."""
    return {key: sums[0] for key, sums in grouped(table).items()}


def snapshot() -> dict[str, dict]:
    return {name: grouped(name) for name in rollups.TABLES}


def sales(scope: int, day: date | None = None) -> tuple[int, int, int, int, int, int]:
    """(orders, quantity, gmv, cost, fees, margin) of a scope (on a day)."""
    _db.session.rollback()
    q = select(func.coalesce(func.sum(SalesDaily.orders), 0), func.coalesce(func.sum(SalesDaily.quantity), 0),
               func.coalesce(func.sum(SalesDaily.gmv), 0), func.coalesce(func.sum(SalesDaily.cost), 0),
               func.coalesce(func.sum(SalesDaily.fees), 0), func.coalesce(func.sum(SalesDaily.margin), 0)
               ).where(SalesDaily.scope_id == scope)
    if day is not None:
        q = q.where(SalesDaily.day == day)
    return tuple(int(v) for v in _db.session.execute(q).one())


def profile(scope: int, dimension: str) -> dict[str, tuple[int, int]]:
    _db.session.rollback()
    rows = _db.session.execute(select(ProfileDaily.value, func.sum(ProfileDaily.orders), func.sum(ProfileDaily.gmv))
                               .where(ProfileDaily.scope_id == scope, ProfileDaily.dimension == dimension)
                               .group_by(ProfileDaily.value)).all()
    return {v: (int(o), int(g)) for v, o, g in rows if o or g}


def money(scope: int) -> dict[str, tuple[int, int]]:
    _db.session.rollback()
    rows = _db.session.execute(select(MoneyDaily.flow, func.sum(MoneyDaily.amount), func.sum(MoneyDaily.count))
                               .where(MoneyDaily.scope_id == scope).group_by(MoneyDaily.flow)).all()
    return {flow: (int(a), int(c)) for flow, a, c in rows if a or c}


def verify_realname(app, monkeypatch, agent, seq: str, region: str = "110105", birth: str | None = None):
    # Born on 1 January thirty years ago: 30 today, whatever the date the test runs on (band 25-34).
    birth = birth or f"{today().year - 30}0101"
    with idv_provider(app, monkeypatch):
        rec = realname.submit(agent.id, "张三丰", id_number(region=region, birth=birth, seq=seq),
                              bank_card(str(int(seq) % 10)), "13812345678")
    assert rec.status == "verified"
    return rec


@pytest.fixture
def world(app, f):
    """Two branches: A → B → C and D → E (commissions 5% direct, 2% indirect), two products."""
    top = f.tier(discount_bp=9000, direct_commission_bp=500, indirect_commission_bp=200, rank=1)
    low = f.tier(discount_bp=9500, direct_commission_bp=500, indirect_commission_bp=200, rank=2)
    a = f.agent("A" + f.unique(""), tier_obj=top, balance=10 ** 7)
    b = f.agent("B" + f.unique(""), parent=a, tier_obj=low, balance=10 ** 7)
    c = f.agent("C" + f.unique(""), parent=b, tier_obj=low, balance=10 ** 7)
    d = f.agent("D" + f.unique(""), tier_obj=top, balance=10 ** 7)
    e = f.agent("E" + f.unique(""), parent=d, tier_obj=low, balance=10 ** 7)
    p1 = f.product(face_price=10000, cost=8000, secrets=20)  # category 1
    p2 = f.product(face_price=5000, cost=4000, secrets=20, supplier_fee_bp=100)  # category 2, supplier fee 1%
    return {"a": a.id, "b": b.id, "c": c.id, "d": d.id, "e": e.id, "p1": p1, "p2": p2,
            "top": top.id, "low": low.id}


def buy(agent_id: int, product, qty: int = 1) -> Order:
    return orders.place_wallet_order(agent_id, product.id, qty)


@BOTH
def test_wallet_orders_counted_per_scope_and_equal_to_rebuild(app, world):
    w = world
    buy(w["c"], w["p1"], 2)  # 2 × 9500 = 19000, cost 16000, fee 0
    buy(w["a"], w["p1"], 1)  # 9000, cost 8000
    buy(w["e"], w["p2"], 3)  # 3 × 4750 = 14250, cost 12000, fee 1% of cost = 120
    day = today()
    #                 orders qty gmv    cost   fees margin
    assert sales(0) == (3, 6, 42250, 36000, 120, 6250)
    assert sales(w["a"]) == (2, 3, 28000, 24000, 0, 4000)  # A's branch: A's own order and C's
    assert sales(w["b"]) == (1, 2, 19000, 16000, 0, 3000)
    assert sales(w["c"]) == (1, 2, 19000, 16000, 0, 3000)
    assert sales(w["d"]) == sales(w["e"]) == (1, 3, 14250, 12000, 120, 2250)
    assert sales(0, day) == sales(0)
    # by dimension: no real-name record → unknown; each buyer's first order is 'first'
    assert profile(w["a"], "gender") == {"unknown": (2, 28000)}
    assert profile(0, "buyer_type") == {"first": (3, 42250)}
    assert sum(o for o, _ in profile(0, "hour").values()) == 3
    assert grouped("agent") == {(str(day), w["c"]): (1, 19000), (str(day), w["a"]): (1, 9000),
                                (str(day), w["e"]): (1, 14250)}
    # tiers are the buyer's at purchase; the product's category and supplier
    by_tier = defaultdict(int)
    for (scope, _d, _p, _c, _ch, tier, _s), sums in grouped("sales").items():
        if scope == 0:
            by_tier[tier] += sums[2]
    assert dict(by_tier) == {w["top"]: 9000, w["low"]: 33250}
    # agents who bought: C (普 tier, path A/B/C), A (top), E (path D/E); at 0 and on each path, buyer included
    d, low, top = str(day), w["low"], w["top"]
    assert counts("active") == {(0, d, low): 2, (0, d, top): 1, (w["a"], d, low): 1, (w["a"], d, top): 1,
                                 (w["b"], d, low): 1, (w["c"], d, low): 1, (w["d"], d, low): 1,
                                 (w["e"], d, low): 1}
    # retention: their joining month (today) and this month; at 0 and above the buyer only
    m = str(day.replace(day=1))
    assert counts("retention") == {(0, m, m, low): 2, (0, m, m, top): 1, (w["a"], m, m, low): 1,
                                    (w["b"], m, m, low): 1, (w["d"], m, m, low): 1}
    # a second order the same day changes neither
    buy(w["c"], w["p2"], 1)
    assert counts("active")[(0, d, low)] == 2 and counts("retention")[(0, m, m, low)] == 2

    assert_rebuild_equal(day - timedelta(days=1), day + timedelta(days=1))


def wipe_rollups() -> None:
    for t in rollups.TABLES.values():
        _db.session.execute(text(f"DELETE FROM {t.name}"))
    _db.session.commit()


def assert_rebuild_equal(start: date, end: date) -> dict:
    """Rebuilding from the source tables, after wiping every rollup row, gives the incremental sums exactly."""
    before = snapshot()
    assert before["sales"], "nothing to compare"
    wipe_rollups()
    assert not any(snapshot().values())
    report = rollups.rebuild(start, end)
    assert report["sales"] > 0 and report["profile"] > 0
    after = snapshot()
    for name in before:
        assert after[name] == before[name], name
    return report


def past(days: int):
    """A clock `days` ago for the order service: what it delivers now is delivered on that China day."""
    moment = utcnow() - timedelta(days=days)
    return lambda: moment


@BOTH
def test_refund_subtracts_on_the_original_day_and_rejected_dispute_counts_once(app, world, monkeypatch):
    w = world
    c = w["c"]
    with monkeypatch.context() as m:
        m.setattr("app.orders.service.utcnow", past(3))
        x = buy(c, w["p1"], 1)  # delivered three days ago: 9500
    old_day = to_local(_db.session.get(Order, x.id).delivered_at).date()
    assert old_day == today() - timedelta(days=3)
    y = buy(c, w["p1"], 1)  # today: 9500, C's second order → returning
    z = buy(c, w["p2"], 2)  # today: 2 × 4750 = 9500
    assert sales(0, old_day)[:3] == (1, 1, 9500)
    assert sales(w["b"], today())[:3] == (2, 3, 19000)

    # refund the old order today: the minus lands on its delivery day, today is untouched
    payments.refund_order(x.id, "测试退款", None)
    assert sales(0, old_day) == (0, 0, 0, 0, 0, 0)
    assert sales(w["a"], old_day) == sales(c, old_day) == (0, 0, 0, 0, 0, 0)
    _db.session.rollback()
    assert _db.session.scalar(select(func.count()).select_from(SalesDaily).where(
        SalesDaily.day == old_day, SalesDaily.orders == -1)) == 4  # scopes 0, A, B, C
    assert sales(0, today())[:3] == (2, 3, 19000)
    assert grouped("agent") == {(str(today()), c): (2, 19000)}

    # a dispute filed and rejected: the order keeps counting, once
    agent = _db.session.get(Agent, c)
    d = disputes.open_as_agent(agent, y.order_no, "没收到卡密", None)
    assert sales(0, today())[:3] == (2, 3, 19000)  # disputed still counts
    disputes.resolve(d.id, "reject", "已核实发货", None)
    assert order_status(y.id) == "delivered"
    assert sales(0, today())[:3] == (2, 3, 19000)
    # a dispute that ends in a refund subtracts
    d2 = disputes.open_as_agent(agent, z.order_no, "没收到卡密", None)
    disputes.resolve(d2.id, "refund", "同意退款", None)
    assert order_status(z.id) == "refunded"
    assert sales(0, today()) == (1, 1, 9500, 8000, 0, 1500)
    assert sales(w["a"]) == sales(w["b"]) == sales(c) == (1, 1, 9500, 8000, 0, 1500)
    # X was C's first delivered order (refunded since, but delivered first): Y is returning
    assert profile(0, "buyer_type") == {"returning": (1, 9500)}
    assert profile(w["b"], "gender") == {"unknown": (1, 9500)}
    # C is active today only (its order three days ago was refunded away), in this month's retention
    low, t, m = w["low"], str(today()), str(today().replace(day=1))
    assert counts("active") == {(0, t, low): 1, (w["a"], t, low): 1, (w["b"], t, low): 1, (c, t, low): 1}
    assert counts("retention") == {(0, m, m, low): 1, (w["a"], m, m, low): 1, (w["b"], m, m, low): 1}

    assert_rebuild_equal(old_day, today())


def order_status(order_id: int) -> str:
    _db.session.rollback()
    return _db.session.scalar(select(Order.status).where(Order.id == order_id))


@BOTH
def test_guest_orders_count_only_for_the_platform(app, world, client):
    w = world
    ph.setup_sandbox()
    first = ph.guest_order(w["p2"], "sandbox", quantity=1, contact="13900000001")
    again = ph.guest_order(w["p2"], "sandbox", quantity=2, contact="13900000001")
    other = ph.guest_order(w["p1"], "sandbox", quantity=1, contact="13900000002")
    for o in (first, again, other):
        assert ph.accepted("sandbox", ph.notify(client, "sandbox", o, ph.trade_no()))
    buy(w["e"], w["p2"], 1)  # an agent order beside them: 4750
    # public price = face price: 5000 + 10000 + 10000
    assert sales(0) == (4, 5, 29750, 24000, 160, 5750)
    assert sales(w["d"])[:3] == (1, 1, 4750)
    _db.session.rollback()
    guest_rows = _db.session.execute(select(SalesDaily.scope_id, SalesDaily.tier_id, SalesDaily.channel)
                                     .where(SalesDaily.channel == "sandbox")).all()
    assert {(r.scope_id, r.tier_id) for r in guest_rows} == {(0, None)}
    assert profile(0, "buyer_type") == {"first": (3, 19750), "returning": (1, 10000)}
    assert profile(0, "age_band") == {"unknown": (4, 29750)}
    # hours from the orders' delivery times (China time)
    hours = defaultdict(lambda: [0, 0])
    for o in _db.session.scalars(select(Order).where(Order.status == "delivered")):
        h = hours[f"{to_local(o.delivered_at).hour:02d}"]
        h[0], h[1] = h[0] + 1, h[1] + o.amount
    assert profile(0, "hour") == {k: tuple(v) for k, v in hours.items()}
    assert _db.session.scalar(select(func.count()).select_from(AgentDaily)) == 1  # guests have no agent row
    assert_rebuild_equal(today(), today())


@PG
def test_profile_from_verified_real_name(app, world, monkeypatch):
    w = world
    c = _db.session.get(Agent, w["c"])
    e = _db.session.get(Agent, w["e"])
    rec_c = verify_realname(app, monkeypatch, c, seq="123")  # male, Beijing, 30 years old
    verify_realname(app, monkeypatch, e, seq="122", region="440305")  # female, Guangdong
    buy(w["c"], w["p1"], 1)  # 9500
    buy(w["e"], w["p2"], 2)  # 9500, category 2
    buy(w["a"], w["p1"], 1)  # 9000, A has no real-name record
    assert profile(0, "gender") == {"M": (1, 9500), "F": (1, 9500), "unknown": (1, 9000)}
    assert profile(w["a"], "gender") == {"M": (1, 9500), "unknown": (1, 9000)}
    assert profile(w["d"], "province") == {"广东省": (1, 9500)}
    assert profile(w["b"], "province") == {rec_c.province: (1, 9500)}
    assert profile(0, "age_band") == {"25-34": (2, 19000), "unknown": (1, 9000)}
    # what each segment buys: gender × category
    _db.session.rollback()
    rows = _db.session.execute(select(ProfileDaily.value, ProfileDaily.category_id, func.sum(ProfileDaily.gmv))
                               .where(ProfileDaily.scope_id == 0, ProfileDaily.dimension == "gender")
                               .group_by(ProfileDaily.value, ProfileDaily.category_id)).all()
    assert {(v, cat): int(g) for v, cat, g in rows} == {
        ("M", w["p1"].category_id): 9500, ("F", w["p2"].category_id): 9500, ("unknown", w["p1"].category_id): 9000}
    assert_rebuild_equal(today(), today())


@BOTH
def test_compaction_keeps_sums_and_reduces_rows(app, world, monkeypatch):
    w = world
    for _ in range(3):
        buy(w["c"], w["p1"], 1)
        buy(w["e"], w["p2"], 1)
    refund = buy(w["c"], w["p2"], 1)
    payments.refund_order(refund.id, "测试退款", None)
    before = snapshot()
    counts = {name: row_count(t.name) for name, t in rollups.TABLES.items()}
    removed = rollups.compact()
    after = {name: row_count(t.name) for name, t in rollups.TABLES.items()}
    assert snapshot() == before
    # C's 3 + 1 orders share (scope, day, product...) keys in 4 scopes; E's 3 in 3 scopes
    assert removed["sales"] == counts["sales"] - after["sales"] > 0
    assert after["agent"] == 2 and counts["agent"] == 8
    assert after["profile"] < counts["profile"]
    # C and E each turned active once (a row per scope: 4 + 3), however many orders; both count at scope 0
    assert counts["active"] == 7 and after["active"] == 6 and removed["active"] == 1
    # delivery times: one row per (day, product, supplier, bucket): 7 deliveries in a few buckets of 2 products
    assert counts["delivery"] == 7 and removed["delivery"] == counts["delivery"] - after["delivery"] > 0
    # nothing new since: a second run merges nothing; a new delta is merged by the next run
    assert rollups.compact() == {"sales": 0, "profile": 0, "agent": 0, "money": 0, "active": 0, "retention": 0,
                                 "shop": 0, "delivery": 0}
    buy(w["c"], w["p1"], 1)
    assert rollups.compact("agent")["agent"] == 1 and row_count("rollup_agent_daily") == 2
    assert rollups.compact(full=True)["agent"] == 0
    # merged rows are single rows per key
    _db.session.rollback()
    assert _db.session.execute(text(
        "SELECT count(*) FROM (SELECT day, agent_id FROM rollup_agent_daily GROUP BY day, agent_id"
        " HAVING count(*) > 1) d")).scalar() == 0
    assert_rebuild_equal(today(), today())


def row_count(table: str) -> int:
    _db.session.rollback()
    return _db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar()


@PG
def test_money_flows_fold_once_and_match_the_ledger(app, f, world, monkeypatch):
    w = world
    monkeypatch.setitem(app.config, "ROLLUP_MONEY_LAG_SECONDS", 0)
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    buy(w["c"], w["p1"], 2)  # 19000: B (parent) 5% = 950, A (grandparent) 2% = 380; margin 3000
    buy(w["e"], w["p2"], 3)  # 14250: D 5% = 712 (floored); margin 2250, supplier fee 120
    run = settlement.settle(trigger="manual", cutoff=utcnow() + timedelta(days=30))
    assert run.settled_amount == 950 + 380 + 712
    # B withdraws ¥200.00 at a 1% fee through review and the payout bank
    b = _db.session.get(Agent, w["b"])
    fee_tier = f.tier(discount_bp=9500, min_withdrawal=10000, withdrawal_fee_bp=100)
    b.tier_id = fee_tier.id
    _db.session.commit()
    verify_realname(app, monkeypatch, b, seq="125")
    wd = withdrawals.request_withdrawal(w["b"], 20000)
    with payout_bank(app, monkeypatch):
        withdrawals.approve(wd.id, None)  # no Redis: the payout runs inline
    assert _db.session.get(Withdrawal, wd.id).status == "paid"
    # C's order refunded after settlement: commissions reversed, the sale reversed
    c_order = _db.session.scalar(select(Order).where(Order.agent_id == w["c"]))
    payments.refund_order(c_order.id, "测试退款", None)

    folded = rollups.fold_money()
    assert folded > 0
    platform = money(0)
    assert platform == {
        "commission_accrued": (2042, 3), "commission_settled": (2042, 3), "commission_reversed": (1330, 2),
        "withdrawal_requested": (20000, 1), "withdrawal_paid": (19800, 1), "withdrawal_fee": (200, 1),
        "revenue": (2250, 1), "fees": (120, 1), "supplier_cost": (11880, 1), "refunds": (19000, 1)}
    # B's branch: its own commissions and withdrawal, and C's order (its sale reversed, the refund)
    assert money(w["b"]) == {
        "commission_accrued": (950, 1), "commission_settled": (950, 1), "commission_reversed": (950, 1),
        "withdrawal_requested": (20000, 1), "withdrawal_paid": (19800, 1), "withdrawal_fee": (200, 1),
        "refunds": (19000, 1)}
    assert money(w["a"]) == {
        "commission_accrued": (1330, 2), "commission_settled": (1330, 2), "commission_reversed": (1330, 2),
        "withdrawal_requested": (20000, 1), "withdrawal_paid": (19800, 1), "withdrawal_fee": (200, 1),
        "refunds": (19000, 1)}
    assert money(w["d"]) == {"commission_accrued": (712, 1), "commission_settled": (712, 1),
                             "revenue": (2250, 1), "fees": (120, 1), "supplier_cost": (11880, 1)}
    assert money(w["e"]) == {"revenue": (2250, 1), "fees": (120, 1), "supplier_cost": (11880, 1)}
    assert money(w["c"]) == {"refunds": (19000, 1)}

    # folding again adds nothing; the watermark is where the last journal is
    before = grouped("money")
    assert rollups.fold_money() == 0 and rollups.fold_money_all() == 0
    assert grouped("money") == before
    # a new journal is folded once; journals younger than the lag wait
    monkeypatch.setitem(app.config, "ROLLUP_MONEY_LAG_SECONDS", 3600)
    buy(w["e"], w["p2"], 1)
    assert rollups.fold_money() == 0
    monkeypatch.setitem(app.config, "ROLLUP_MONEY_LAG_SECONDS", 0)
    assert rollups.fold_money() == 2  # the sale and its commission accrual
    assert money(w["d"])["commission_accrued"] == (712 + 237, 2)
    # a rebuild of the range from the journals gives the folded rows exactly
    assert_rebuild_equal(today(), today())


@PG
def test_fold_in_batches_and_rebuild_respect_the_watermark(app, world, monkeypatch):
    w = world
    monkeypatch.setitem(app.config, "ROLLUP_MONEY_LAG_SECONDS", 0)
    assert rollups.fold_money_all() == 5  # the agents' funding: adjustments, not a flow
    assert money(0) == {}
    for _ in range(3):
        buy(w["c"], w["p1"], 1)  # a sale and an accrual journal each
    assert rollups.fold_money(limit=2) == 2
    assert rollups.fold_money(limit=2) == 2
    partial = money(0)
    # a rebuild now counts only what the watermark has passed (so the next fold does not count it twice)
    rollups.rebuild(today(), today())
    assert money(0) == partial
    assert rollups.fold_money_all() == 2
    assert money(0)["commission_accrued"] == (3 * (475 + 190), 6)
    assert money(0)["revenue"] == (3 * 1500, 3)


@BOTH
def test_cli_and_jobs(app, world, monkeypatch):
    buy(world["c"], world["p1"], 1)
    runner = app.test_cli_runner()
    day = today().isoformat()
    result = runner.invoke(args=["kameng", "rollups", "rebuild", "--from", day, "--to", day])
    assert result.exit_code == 0, result.output
    assert "sales: 4" in result.output  # scopes 0, A, B, C
    bad = runner.invoke(args=["kameng", "rollups", "rebuild", "--from", "2026-13-01", "--to", day])
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
    backwards = runner.invoke(args=["kameng", "rollups", "rebuild", "--from", day, "--to", "2020-01-01"])
    assert backwards.exit_code == 2 and "结束日期" in backwards.output
    buy(world["c"], world["p1"], 1)
    result = runner.invoke(args=["kameng", "rollups", "compact", "--table", "agent"])
    assert result.exit_code == 0 and "agent: 1 rows removed" in result.output
    monkeypatch.setitem(app.config, "ROLLUP_MONEY_LAG_SECONDS", 0)
    result = runner.invoke(args=["kameng", "rollups", "fold-money"])
    assert result.exit_code == 0 and "journals folded: 9" in result.output  # 5 fundings, 2 sales, 2 accruals
    # the jobs call the same service (no Redis: enqueue runs them inline)
    from workers import jobs

    assert rollups.schedule_rebuild(today(), today()) is None
    assert jobs.rebuild_rollups(day, day)["sales"] == 4
    assert jobs.compact_rollups()["sales"] >= 0
    assert jobs.fold_money_flows() == 0
    assert sales(0) == (2, 2, 19000, 16000, 0, 3000)


@PG
def test_one_agents_deliveries_at_once_count_it_once(app, client, f, supplier_sim):
    """Six direct top-ups of one agent delivered by six real threads at the same moment (the upstream answers all
    after 200 ms), each folded right after its commit (jobs inline): the fold asks whether the agent's day and
    month were already active and whether the order is the agent's first; only one may be, and it must be the one
    a rebuild calls first (the earliest delivery time). (When the rollups were written in the delivering
    transaction without a per-buyer lock, four of six called themselves the first order.)"""
    # A top agent with no upline: no commission account is locked by its deliveries, nothing else orders them.
    buyer = f.agent(tier_obj=f.tier(discount_bp=9500), balance=100_000)
    w = RechargeWorld(None, buyer, f.product(kind="direct", face_price=1_000, cost=880), *new_key(buyer))
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", latency_ms=200)
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: the jobs wait in the outbox
    try:
        order_ids = [recharge_order(place_api(client, w)["order_no"]).id for _ in range(6)]
    finally:
        app.config["REDIS_URL"] = None
    barrier = threading.Barrier(len(order_ids))
    results: list = []

    def deliver(order_id: int) -> None:
        with app.app_context():
            barrier.wait(timeout=30)
            results.append(recharge.run(order_id))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in order_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == ["delivered"] * 6
    day, tier = str(today()), buyer.tier_id
    month = str(today().replace(day=1))
    assert counts("active") == {(0, day, tier): 1, (buyer.id, day, tier): 1}
    assert counts("retention") == {(0, month, month, tier): 1}
    assert grouped("agent") == {(day, buyer.id): (6, 6 * 950)}
    assert_rebuild_equal(today(), today())

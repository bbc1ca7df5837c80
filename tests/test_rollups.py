"""Analytics rollups: deltas written on delivery / refund through the real purchase and payment paths, summed per
scope against hand-computed figures; refunds on the original day; a rejected dispute counted once; incremental
rows equal to a rebuild; compaction keeps the sums; money flows folded once and matching the ledger."""
from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select, text

from app.analytics import service as rollups
from app.analytics.models import MoneyDaily, ProfileDaily, SalesDaily
from app.clock import to_local, utcnow
from app.extensions import db as _db
from app.network import realname
from app.orders import service as orders
from app.orders.models import Order
from tests.network_helpers import bank_card, id_number, idv_provider

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
PG = pytest.mark.parametrize("app", ["postgresql"], indirect=True)


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

    before = snapshot()
    report = rollups.rebuild(day - timedelta(days=1), day + timedelta(days=1))
    assert report["sales"] > 0 and report["profile"] > 0
    assert snapshot() == before

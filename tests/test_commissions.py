"""Commissions: accrual on delivery from the upline snapshot, reversal on refund, freezing by disputes."""
from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.extensions import db
from app.ledger import service as ledger
from app.ledger.invariants import check_ledger
from app.ledger.models import Journal
from app.money import apply_rate
from app.network import commissions
from app.network.models import Commission
from app.orders import service as orders
from app.payments import disputes
from app.payments import service as payments


def _chain(f, rates: list[tuple[int, int]], settle_days: int = 7):
    """root → ... → buyer; rates[i] = (direct, indirect) of the i-th agent from the root."""
    agents = []
    parent = None
    for direct, indirect in rates:
        t = f.tier(direct_commission_bp=direct, indirect_commission_bp=indirect, settle_days=settle_days)
        parent = f.agent(parent=parent, tier_obj=t, with_user=False)
        agents.append(parent)
    return agents


def _rows(order_id: int) -> dict[int, Commission]:
    db.session.expire_all()
    return {c.agent_id: c for c in db.session.scalars(select(Commission).where(Commission.order_id == order_id))}


def _bal(agent_id: int) -> dict[str, int]:
    db.session.expire_all()
    return ledger.agent_balances(agent_id)


def test_wallet_order_accrues_direct_and_indirect_from_the_snapshot(app, f):
    # given root (indirect 3%) → mid (direct 5%) → buyer, a 95% tier price of ¥100.00 face
    root, mid, buyer = _chain(f, [(1000, 300), (500, 200), (0, 0)])
    f.fund(buyer, 100_000)
    p = f.product(secrets=3)
    # when the buyer buys one card from the wallet
    order = orders.place_wallet_order(buyer.id, p.id, 1)
    # then mid earns 5% and root 3% of the paid amount, pending, due after settle_days
    rows = _rows(order.id)
    assert order.amount == 9500
    assert {a: (c.level, c.rate_bp, c.amount, c.status) for a, c in rows.items()} == {
        mid.id: (1, 500, 475, "pending"), root.id: (2, 300, 285, "pending")}
    # accrued in the delivering transaction, a moment before the delivered stamp
    assert abs(rows[mid.id].settle_after - (order.delivered_at + timedelta(days=7))) < timedelta(seconds=1)
    assert _bal(mid.id)["pending"] == 475 and _bal(root.id)["pending"] == 285
    journal = db.session.scalar(select(Journal).where(Journal.idempotency_key == f"commission:{order.order_no}:accrue"))
    assert journal.kind == "commission_accrual"
    assert sorted(p.amount for p in journal.postings) == [-760, 285, 475]
    assert check_ledger() == []


def test_levels_are_capped_and_inactive_uplines_get_nothing(app, f):
    a1, a2, a3, a4, buyer = _chain(f, [(100, 100), (100, 100), (100, 100), (100, 100), (0, 0)])
    f.fund(buyer, 100_000)
    p = f.product(secrets=5)
    order = orders.place_wallet_order(buyer.id, p.id, 1)
    assert {c.level for c in _rows(order.id).values()} == {1, 2}  # default COMMISSION_MAX_LEVELS = 2
    app.config["COMMISSION_MAX_LEVELS"] = 3
    try:
        a3.active = False  # level 2 is inactive: it earns nothing, level 3 keeps its level and rate
        db.session.commit()
        order = orders.place_wallet_order(buyer.id, p.id, 1)
        rows = _rows(order.id)
        assert {a: c.level for a, c in rows.items()} == {a4.id: 1, a2.id: 3}
    finally:
        app.config["COMMISSION_MAX_LEVELS"] = 2


def test_snapshot_not_todays_tree_decides_on_refund(app, f):
    root, mid, buyer = _chain(f, [(0, 200), (500, 0), (0, 0)])
    f.fund(buyer, 100_000)
    p = f.product(secrets=2)
    order = orders.place_wallet_order(buyer.id, p.id, 1)
    before = f.wallet(buyer)
    payments.refund_order(order.id, "退款", None)
    rows = _rows(order.id)
    assert {c.status for c in rows.values()} == {"reversed"}
    assert _bal(mid.id)["pending"] == 0 and _bal(root.id)["pending"] == 0
    assert f.wallet(buyer) == before + order.amount
    assert check_ledger() == []


def test_dispute_freezes_then_rejection_releases_and_refund_reverses(app, f):
    _root, mid, buyer = _chain(f, [(0, 0), (1000, 0), (0, 0)])
    f.fund(buyer, 100_000)
    p = f.product(secrets=3)
    order = orders.place_wallet_order(buyer.id, p.id, 1)
    d = disputes.open_as_agent(db.session.get(type(buyer), buyer.id), order.order_no, "卡密无效", None)
    assert _rows(order.id)[mid.id].status == "frozen"
    assert _bal(mid.id) == {"wallet": 0, "pending": 0, "frozen": 950}
    disputes.resolve(d.id, "reject", "卡密有效", None)
    assert _rows(order.id)[mid.id].status == "pending"
    assert _bal(mid.id) == {"wallet": 0, "pending": 950, "frozen": 0}

    order2 = orders.place_wallet_order(buyer.id, p.id, 1)
    d2 = disputes.open_as_agent(db.session.get(type(buyer), buyer.id), order2.order_no, "卡密无效", None)
    disputes.resolve(d2.id, "refund", "确认无效", None)
    assert _rows(order2.id)[mid.id].status == "reversed"
    assert _bal(mid.id) == {"wallet": 0, "pending": 950, "frozen": 0}
    assert check_ledger() == []


@st.composite
def scenarios(draw):
    n = draw(st.integers(2, 6))
    parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    # keep depth ≤ 5
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
        if depth[i] > 4:
            parents[i], depth[i] = parents[parents[i]], depth[parents[i]]
    rates = [(draw(st.integers(0, 5000)), draw(st.integers(0, 5000))) for _ in range(n)]
    active = [draw(st.booleans()) or i == 0 for i in range(n)]
    buys = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 3), st.booleans()), min_size=1,
                         max_size=4))
    levels = draw(st.sampled_from([1, 2, 3]))
    return parents, rates, active, buys, levels


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(scenarios())
def test_property_commissions_follow_the_snapshot_and_refunds_reverse_them(app, f, scenario):
    parents, rates, active, buys, levels = scenario
    app.config["COMMISSION_MAX_LEVELS"] = levels
    try:
        tiers = [f.tier(direct_commission_bp=d, indirect_commission_bp=i) for d, i in rates]
        agents = []
        for i, parent in enumerate(parents):
            agents.append(f.agent(parent=agents[parent] if parent is not None else None, tier_obj=tiers[i],
                                  with_user=False))
        for i, a in enumerate(agents):
            a.active = active[i]
        db.session.commit()
        p = f.product(face_price=10000, cost=1000, secrets=12)
        for buyer_idx, qty, refund in buys:
            buyer = agents[buyer_idx]
            if not buyer.active:
                continue
            f.fund(buyer, 100_000)
            snapshot = buyer.path
            order = orders.place_wallet_order(buyer.id, p.id, qty)
            ups = commissions.upline_ids(snapshot)[:levels]
            expected = {}
            for level, aid in enumerate(ups, start=1):
                idx = next(k for k, a in enumerate(agents) if a.id == aid)
                rate = rates[idx][0] if level == 1 else rates[idx][1]
                if active[idx] and apply_rate(order.amount, rate) > 0:
                    expected[aid] = (level, apply_rate(order.amount, rate))
            rows = _rows(order.id)
            assert {a: (c.level, c.amount) for a, c in rows.items()} == expected
            max_share = sum(apply_rate(order.amount, 5000) for _ in ups)
            assert sum(c.amount for c in rows.values()) <= max_share
            pending_before = {a: _bal(a)["pending"] for a in expected}
            if refund:
                payments.refund_order(order.id, "退款", None)
                rows = _rows(order.id)
                assert all(c.status == "reversed" for c in rows.values())
                for a, (_, amt) in expected.items():
                    assert _bal(a)["pending"] == pending_before[a] - amt
            assert check_ledger() == []
    finally:
        app.config["COMMISSION_MAX_LEVELS"] = 2

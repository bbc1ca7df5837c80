"""团队业绩奖: hand-computed team GMV over a business month (Asia/Shanghai, by delivered_at), awards paid once to the
wallet, inactive rules award nothing, the CLI and the audited admin form."""
from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import func, select, update

from app.audit.models import AuditEntry
from app.errors import KamengError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.models import Journal
from app.network import team_bonus
from app.network.models import TeamBonusAward, TeamBonusRule
from app.orders import service as orders
from app.orders.models import Order


def _buy(agent, product, quantity: int, delivered_at: datetime) -> Order:
    order = orders.place_wallet_order(agent.id, product.id, quantity)
    db.session.execute(update(Order).where(Order.id == order.id).values(delivered_at=delivered_at))
    db.session.commit()
    return order


def _wallets(agents) -> dict[int, int]:
    db.session.expire_all()
    return {a.id: ledger.agent_balances(a.id)["wallet"] for a in agents}


@pytest.fixture
def world(app, f):
    """root → A → B, root → C; X in another tree. Cards at ¥100.01 (a 100% tier price: amount = face)."""
    tier = f.tier(discount_bp=10000)
    root = f.agent(tier_obj=tier, with_user=False)
    a = f.agent(parent=root, tier_obj=tier, with_user=False, balance=100_000)
    b = f.agent(parent=a, tier_obj=tier, with_user=False, balance=100_000)
    c = f.agent(parent=root, tier_obj=tier, with_user=False, balance=100_000)
    x = f.agent(tier_obj=tier, with_user=False, balance=100_000)
    p = f.product(face_price=10001, cost=8000, secrets=20)
    _buy(b, p, 3, datetime(2026, 10, 15, 4, 0))  # 30003, October
    _buy(a, p, 2, datetime(2026, 9, 30, 16, 30))  # 20002: 2026-10-01 00:30 in Shanghai → October
    _buy(c, p, 1, datetime(2026, 10, 31, 16, 0))  # 10001: 2026-11-01 00:00 in Shanghai → November, not counted
    _buy(c, p, 4, datetime(2026, 10, 31, 15, 59, 59))  # 40004: 23:59:59 on Oct 31 in Shanghai → October
    _buy(x, p, 5, datetime(2026, 10, 2, 0, 0))  # 50005, October
    return {"root": root, "a": a, "b": b, "c": c, "x": x}


def _rule(active: bool, threshold: int = 50_000, rate_bp: int = 333, name: str = "月度团队奖") -> TeamBonusRule:
    rule = TeamBonusRule(name=name, min_monthly_gmv=threshold, rate_bp=rate_bp, active=active)
    db.session.add(rule)
    db.session.commit()
    return rule


def test_month_bounds_are_business_time():
    period = team_bonus.parse_month("2026-10")
    assert (period.month, period.start, period.end) == \
        ("2026-10", datetime(2026, 9, 30, 16), datetime(2026, 10, 31, 16))
    assert team_bonus.parse_month("2026-12").end == datetime(2026, 12, 31, 16)
    for bad in ("2026-13", "26-10", "2026/10", ""):
        with pytest.raises(KamengError):
            team_bonus.parse_month(bad)


def test_team_gmv_is_hand_computed_and_includes_own_purchases(app, world):
    w = world
    gmv = team_bonus.team_gmv(team_bonus.parse_month("2026-10"))
    assert gmv == {w["b"].id: 30003, w["a"].id: 50005, w["c"].id: 40004, w["root"].id: 90009, w["x"].id: 50005}
    nov = team_bonus.team_gmv(team_bonus.parse_month("2026-11"))
    assert nov == {w["c"].id: 10001, w["root"].id: 10001}


def test_awards_floor_once_to_the_wallet_and_a_rerun_awards_nothing(app, world):
    w = world
    rule = _rule(active=True)  # ¥500.00, 3.33%
    off = _rule(active=False, threshold=1, rate_bp=1000, name="未启用")
    everyone = list(w.values())
    before = _wallets(everyone)
    expense0 = ledger.balance_of("platform:commission_expense")

    report = team_bonus.run("2026-10")

    # A 50005 × 3.33% = 1665.1665 → 1665; root 90009 → 2997.2997 → 2997; X 50005 → 1665; B and C below ¥500.00
    expected = {w["a"].id: 1665, w["root"].id: 2997, w["x"].id: 1665}
    assert report == {"month": "2026-10", "rules": 1, "qualified": 3, "awarded": 3, "amount": 6327,
                      "already_awarded": 0}
    after = _wallets(everyone)
    assert {k: after[k] - before[k] for k in after} == {a.id: expected.get(a.id, 0) for a in everyone}
    assert ledger.balance_of("platform:commission_expense") - expense0 == -6327
    awards = {(r.rule_id, r.agent_id): (r.month, r.gmv, r.amount) for r in db.session.scalars(select(TeamBonusAward))}
    assert awards == {(rule.id, w["a"].id): ("2026-10", 50005, 1665), (rule.id, w["root"].id): ("2026-10", 90009, 2997),
                      (rule.id, w["x"].id): ("2026-10", 50005, 1665)}
    keys = set(db.session.scalars(select(Journal.idempotency_key).where(Journal.kind == "team_bonus")))
    assert keys == {f"team-bonus:{rule.id}:{aid}:2026-10" for aid in expected}
    for aid in expected:  # pending is left to the commission rows
        assert ledger.agent_balances(aid)["pending"] == 0

    again = team_bonus.run("2026-10")
    assert again["awarded"] == 0 and again["already_awarded"] == 3 and again["amount"] == 0
    assert _wallets(everyone) == after
    assert db.session.scalar(select(func.count()).select_from(TeamBonusAward)) == 3
    assert not db.session.scalar(select(func.count()).select_from(TeamBonusAward)
                                 .where(TeamBonusAward.rule_id == off.id))


def test_inactive_rules_award_nothing(app, world):
    _rule(active=False, threshold=1, rate_bp=1000)
    before = _wallets(list(world.values()))
    journals = db.session.scalar(select(func.count()).select_from(Journal))
    assert team_bonus.run("2026-10")["awarded"] == 0
    assert _wallets(list(world.values())) == before
    assert db.session.scalar(select(func.count()).select_from(Journal)) == journals
    assert TeamBonusRule(name="x", min_monthly_gmv=1, rate_bp=1).active in (None, False)  # the column default
    rule = TeamBonusRule(name="default", min_monthly_gmv=1, rate_bp=100)
    db.session.add(rule)
    db.session.commit()
    assert rule.active is False


def test_cli_and_scheduled_job(app, world):
    from workers.jobs import award_team_bonus
    from workers.schedule import PERIODIC

    _rule(active=True)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "team-bonus", "--month", "2026-10"])
    assert result.exit_code == 0, result.output
    assert "awarded: 3" in result.output and "amount: 6327" in result.output
    result = runner.invoke(args=["kameng", "team-bonus", "--month", "2026-13"])
    assert result.exit_code != 0
    assert award_team_bonus("2026-10")["already_awarded"] == 3
    job = {p.name: p for p in PERIODIC}["team-bonus"]
    assert job.cron == "10 3 1 * *" and job.func is award_team_bonus
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(TeamBonusAward)) == 3


def test_admin_form_creates_an_inactive_rule_in_yuan_and_percent_audited(app, f, client):
    admin = f.user(f.unique("admin"), role="Admin")
    f.login(client, admin.username)
    r = client.post("/team-bonus-rules/add", data={"name": "季度冲刺", "min_monthly_gmv": "500.00",
                                                   "rate_bp": "3.33"})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    rule = db.session.scalar(select(TeamBonusRule).where(TeamBonusRule.name == "季度冲刺"))
    assert (rule.min_monthly_gmv, rule.rate_bp, rule.active) == (50000, 333, False)
    r = client.post("/team-bonus-rules/add", data={"name": "太高", "min_monthly_gmv": "500", "rate_bp": "10.01"})
    assert r.status_code == 200
    db.session.rollback()
    assert db.session.scalar(select(TeamBonusRule).where(TeamBonusRule.name == "太高")) is None
    r = client.post(f"/team-bonus-rules/edit/{rule.id}", data={"name": "季度冲刺", "min_monthly_gmv": "500.00",
                                                                "rate_bp": "3.33", "active": "y"})
    assert r.status_code == 302
    db.session.rollback()
    assert db.session.get(TeamBonusRule, rule.id).active is True
    actions = list(db.session.scalars(select(AuditEntry.action).where(AuditEntry.target_type == "team_bonus_rule")
                                      .order_by(AuditEntry.id)))
    assert actions == ["team_bonus_rule.create", "team_bonus_rule.update"]
    assert client.get("/team-bonus-rules/list/").status_code == 200
    assert client.get("/team-bonus-awards/list/").status_code == 200

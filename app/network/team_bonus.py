"""团队业绩奖 (team bonus): a monthly bonus on a subtree's GMV, off by default (TeamBonusRule.active = False).

For a business month (BUSINESS_TIMEZONE, Asia/Shanghai) and each active rule:
- An agent's team GMV is the sum of `order.amount` over orders with status `delivered` and `delivered_at` inside
  the month, bought by the agent itself or anyone in its downline (app.scope.downline_ids: the subtree includes
  its head, so the agent's own purchases count). Orders refunded by the time the bonus runs are not counted; a
  refund after the award does not claw it back (the month is closed).
- Each active agent whose team GMV reaches `min_monthly_gmv` is awarded floor(gmv × rate_bp), once.
- Booking: a TeamBonusAward row (unique (rule, agent, month)) and the journal `team-bonus:<rule>:<agent>:<month>`:
  platform:commission_expense −amount, agent:<id>:wallet +amount. The bonus is paid straight to the WALLET: it is
  computed on a closed month of already-delivered orders, so it has nothing to wait for, and agent:<id>:pending
  stays exactly the sum of the agent's pending Commission rows (settlement moves pending → wallet only through
  Commission rows).
- Idempotent: the award row is inserted with ON CONFLICT DO NOTHING and the journal key posts once; a second run
  of the same month awards nothing more. One transaction per award.

Run monthly by the "team-bonus" job (for last month) or `flask kameng team-bonus --month YYYY-MM`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from flask_babel import gettext
from sqlalchemy import func, select

from app.agents.models import Agent
from app.clock import business_tz, utcnow
from app.errors import ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.service import Line, agent_account_code
from app.money import apply_rate
from app.network.commissions import EXPENSE
from app.network.models import TeamBonusAward, TeamBonusRule
from app.orders.models import Order

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class MonthRange:
    month: str  # 2026-11
    start: datetime  # UTC, naive
    end: datetime  # UTC, naive (exclusive)


def parse_month(value: str | None) -> MonthRange:
    """`YYYY-MM` → the UTC bounds of that business month; None → last month (business time)."""
    if value is None:
        local = utcnow().replace(tzinfo=UTC).astimezone(business_tz())
        year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    else:
        m = _MONTH.match(value.strip())
        if not m:
            raise ValidationError(gettext("月份格式不正确: %(value)s（例如 2026-10）", value=repr(value[:16])))
        year, month = int(m.group(1)), int(m.group(2))
    tz = business_tz()
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
    as_utc = lambda d: d.astimezone(UTC).replace(tzinfo=None)  # noqa: E731
    return MonthRange(f"{year:04d}-{month:02d}", as_utc(start), as_utc(end))


def team_gmv(period: MonthRange) -> dict[int, int]:
    """Team GMV per agent for the month: one grouped query (GMV per buyer agent with its path), rolled up to every
    ancestor on the path in Python. Agents without team GMV are left out."""
    rows = db.session.execute(
        select(Agent.path, func.sum(Order.amount))
        .join(Order, Order.agent_id == Agent.id)
        .where(Order.status == "delivered", Order.delivered_at >= period.start, Order.delivered_at < period.end)
        .group_by(Agent.id, Agent.path)).all()
    totals: dict[int, int] = {}
    for path, amount in rows:
        for agent_id in (int(x) for x in path.strip("/").split("/") if x):
            totals[agent_id] = totals.get(agent_id, 0) + int(amount)
    return totals


def _award(rule_id: int, agent_id: int, month: str, gmv: int, amount: int) -> bool:
    """Book one award in its own transaction. False when it already exists (an earlier run)."""
    try:
        inserted = db.session.execute(
            ledger._insert(TeamBonusAward.__table__).values(rule_id=rule_id, agent_id=agent_id, month=month, gmv=gmv,
                                                     amount=amount, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["rule_id", "agent_id", "month"])
            .returning(TeamBonusAward.__table__.c.id)).scalar()
        if inserted is None:
            db.session.rollback()
            return False
        wallet = agent_account_code(agent_id, "wallet")
        locked = ledger.lock_accounts([EXPENSE, wallet])
        ledger.post_journal(f"team-bonus:{rule_id}:{agent_id}:{month}", "team_bonus",
                            # i18n-keep: data
                            [Line(EXPENSE, -amount), Line(wallet, amount)], memo=f"团队业绩奖 {month}",
                            locked=locked)
        db.session.commit()
        return True
    except Exception:
        db.session.rollback()
        raise


def run(month: str | None = None) -> dict:
    """Award every active rule for the month (default last month). Returns a report; safe to run again."""
    period = parse_month(month)
    rules = list(db.session.scalars(select(TeamBonusRule).where(TeamBonusRule.active.is_(True))
                                    .order_by(TeamBonusRule.id)))
    report = {"month": period.month, "rules": len(rules), "qualified": 0, "awarded": 0, "amount": 0,
              "already_awarded": 0}
    if not rules:
        db.session.rollback()
        return report
    gmv = team_gmv(period)
    active = set(db.session.scalars(select(Agent.id).where(Agent.active.is_(True), Agent.id.in_(list(gmv)))))
    rule_rows = [(r.id, r.min_monthly_gmv, r.rate_bp) for r in rules]
    db.session.rollback()
    for rule_id, threshold, rate_bp in rule_rows:
        for agent_id in sorted(gmv):
            total = gmv[agent_id]
            if agent_id not in active or total < threshold:
                continue
            amount = apply_rate(total, rate_bp)
            if amount <= 0:
                continue
            report["qualified"] += 1
            if _award(rule_id, agent_id, period.month, total, amount):
                report["awarded"] += 1
                report["amount"] += amount
            else:
                report["already_awarded"] += 1
    return report


__all__ = ["MonthRange", "parse_month", "run", "team_gmv"]

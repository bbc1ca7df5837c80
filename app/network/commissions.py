"""Commissions: accrued on delivery (pending), frozen by a dispute, reversed on refund, settled later.

Rules (DESIGN.md, "Agents, tiers, commissions"):
- A commission is a share of the buyer's paid amount (`order.amount`), floored once (app.money.apply_rate).
- Beneficiaries are the uplines in the order's `upline_path` snapshot, nearest first: level 1 (the parent) at
  its tier's `direct_commission_bp`, level 2 at its tier's `indirect_commission_bp`; level 3 only when
  COMMISSION_MAX_LEVELS = 3, also at the indirect rate. Levels are positions in the snapshot: an inactive
  upline (or a rate of 0) gets nothing and the next one keeps its own level (no compression).
- Accrual: one journal per order, `commission:<order_no>:accrue`: platform:commission_expense -total,
  agent:<id>:pending +amount each. Commission rows are `pending`, settle_after = delivery + tier settle_days.
- Dispute: filing moves the order's pending commissions to agent:<id>:frozen and marks them `frozen` (a status
  of its own, so settlement, which takes only `pending`, skips them); a rejected dispute moves them back to
  `pending`, a refund reverses them from frozen.
- Reversal (refund): pending/frozen → back to commission_expense; settled → taken from the wallet as far as it
  holds, the rest becomes a debt on agent:<id>:receivable. The receivable is a non-cached account created on
  demand; a debt is a debit there, so `receivable_owed()` (minus the sum of its postings) is positive while the
  agent owes. Settlement recovers it first. A wallet never goes negative.

- Agent shops (app.agentshops): a shop order's uplines earn on the agent's own price (`order.shop_base_amount`),
  as on any purchase by the agent; the agent's shop profit is a row of its own at level 0 (SHOP_PROFIT_LEVEL),
  accrued by `shopprofit:<order_no>` (platform:shop_profit_expense), and frozen, settled and reversed with the
  order's commissions (its reversal journal `shopprofit:<order_no>:reverse` credits shop_profit_expense).

Lock order everywhere: commission rows first, then ledger accounts (ascending id, one lock_accounts call).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from flask_babel import lazy_gettext
from sqlalchemy import func, insert, select

from app import cache, states
from app.agents.models import Agent, Tier
from app.agentshops.models import AgentShop
from app.clock import utcnow
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.models import Account, Posting
from app.ledger.service import Line, agent_account_code
from app.money import apply_rate
from app.network.models import COMMISSION_STATES, Commission

EXPENSE = "platform:commission_expense"
SHOP_EXPENSE = "platform:shop_profit_expense"
SHOP_PROFIT_LEVEL = 0  # the shop's own agent: its shop profit (app.agentshops), not an upline's commission
STATUS_LABELS = {
    "pending": lazy_gettext("待结算"),
    "frozen": lazy_gettext("维权冻结"),
    "settled": lazy_gettext("已结算"),
    "reversed": lazy_gettext("已冲回"),
}


@dataclass(frozen=True)
class Beneficiary:
    level: int
    agent_id: int
    rate_bp: int
    settle_days: int

    @property
    def pending_code(self) -> str:
        return agent_account_code(self.agent_id, "pending")


def max_levels() -> int:
    return max(0, min(int(current_app.config.get("COMMISSION_MAX_LEVELS", 2)), 3))


def upline_ids(upline_path: str | None) -> list[int]:
    """Ancestors nearest first from a path snapshot that includes the buyer itself (`/1/7/42/` → [7, 1])."""
    ids = [int(x) for x in (upline_path or "").strip("/").split("/") if x]
    return list(reversed(ids[:-1]))


def beneficiaries(upline_path: str | None) -> list[Beneficiary]:
    """Who earns on an order bought along `upline_path`, with the rate each earns (0 rates left out)."""
    levels = max_levels()
    ids = upline_ids(upline_path)[:levels]
    if not ids:
        return []
    return list(cache.fetch("beneficiaries", tuple(ids), lambda: tuple(_load_beneficiaries(ids))))


def _load_beneficiaries(ids: list[int]) -> list[Beneficiary]:
    rows = db.session.execute(
        select(Agent.id, Agent.active, Tier.direct_commission_bp, Tier.indirect_commission_bp, Tier.settle_days)
        .join(Tier, Tier.id == Agent.tier_id).where(Agent.id.in_(ids))).all()
    by_id = {row.id: row for row in rows}
    result = []
    for level, agent_id in enumerate(ids, start=1):
        row = by_id.get(agent_id)
        if row is None or not row.active:
            continue
        rate = row.direct_commission_bp if level == 1 else row.indirect_commission_bp
        if rate > 0:
            result.append(Beneficiary(level, agent_id, rate, row.settle_days))
    return result


def accrue(order, plan: list[Beneficiary], locked: dict | None = None, delivered_at=None,
           base: int | None = None) -> int:
    """Book the order's commissions (rows + one journal) in the caller's transaction. Returns the total.

    `locked`: accounts already locked by the caller (the wallet purchase locks the beneficiaries' pending
    accounts together with the buyer's wallet, in one ascending-id lock); it must include commission_expense.
    `base`: what the rates apply to, when not the paid amount (an agent shop's order: the agent's own price).
    """
    base = order.amount if base is None else base
    amounts = [(b, apply_rate(base, b.rate_bp)) for b in plan]
    amounts = [(b, amt) for b, amt in amounts if amt > 0]
    if not amounts:
        return 0
    now = utcnow()
    delivered = delivered_at or now
    db.session.connection().execute(insert(Commission.__table__), [
        {"order_id": order.id, "agent_id": b.agent_id, "level": b.level, "rate_bp": b.rate_bp,
         "base_amount": base, "amount": amt, "status": "pending",
         "settle_after": delivered + timedelta(days=b.settle_days), "created_at": now}
        for b, amt in amounts])
    total = sum(amt for _, amt in amounts)
    lines = [Line(EXPENSE, -total)] + [Line(b.pending_code, amt) for b, amt in amounts]
    ledger.post_journal(f"commission:{order.order_no}:accrue", "commission_accrual", lines,
                        memo=f"佣金 {order.order_no}", order_id=order.id, locked=locked)  # i18n-keep: data
    return total


def record_shop_profit(order, agent_id: int, amount: int, rate_bp: int, base: int, settle_after) -> None:
    """The shop profit's row (level 0) of a shop order delivered, in the caller's transaction; the caller
    (_accrue_shop_order) posts its journal under the same lock."""
    db.session.connection().execute(insert(Commission.__table__), [
        {"order_id": order.id, "agent_id": agent_id, "level": SHOP_PROFIT_LEVEL, "rate_bp": rate_bp,
         "base_amount": base, "amount": amount, "status": "pending", "settle_after": settle_after,
         "created_at": utcnow()}])


def accrue_for_delivered(order) -> int:
    """Accrual for an order delivered outside the wallet purchase (a channel payment): locks on its own."""
    if order.shop_id is not None:  # sold in an agent's shop: its shop profit, and its uplines on its own price
        return _accrue_shop_order(order)
    if order.agent_id is None or not order.upline_path:
        return 0
    if db.session.scalar(select(Commission.id).where(Commission.order_id == order.id).limit(1)) is not None:
        return 0
    plan = beneficiaries(order.upline_path)
    if not plan:
        return 0
    locked = ledger.lock_accounts([EXPENSE] + [b.pending_code for b in plan])
    return accrue(order, plan, locked=locked)


def _accrue_shop_order(order) -> int:
    """A shop order delivered (in the delivering transaction): the agent's shop profit (pending, T+N of its tier)
    and its uplines' commissions on its own price, under one ascending-id lock of every account touched. Runs once
    per order (nothing when the order already has commission rows). Returns the total accrued."""
    if db.session.scalar(select(Commission.id).where(Commission.order_id == order.id).limit(1)) is not None:
        return 0
    agent_id, settle_days = db.session.execute(
        select(AgentShop.agent_id, Tier.settle_days).join(Agent, Agent.id == AgentShop.agent_id)
        .join(Tier, Tier.id == Agent.tier_id).where(AgentShop.id == order.shop_id)).one()
    plan = beneficiaries(order.upline_path)
    pending = agent_account_code(agent_id, "pending")
    profit = order.shop_profit or 0
    codes = {pending, SHOP_EXPENSE} if profit > 0 else set()
    if plan:
        codes |= {EXPENSE, *(b.pending_code for b in plan)}
    if not codes:
        return 0
    locked = ledger.lock_accounts(sorted(codes))
    total = accrue(order, plan, locked=locked, base=order.shop_base_amount) if plan else 0
    if profit > 0:
        delivered = order.delivered_at or utcnow()
        rate = profit * 10_000 // order.shop_base_amount if order.shop_base_amount else 0
        record_shop_profit(order, agent_id, profit, rate, order.shop_base_amount,
                           delivered + timedelta(days=settle_days))
        ledger.post_journal(f"shopprofit:{order.order_no}", "shop_profit",
                            [Line(SHOP_EXPENSE, -profit), Line(pending, profit)],
                            memo=f"分站利润 {order.order_no}", order_id=order.id, locked=locked)  # i18n-keep: memo
    return total + profit


def _lock_order_commissions(order_id: int, statuses: tuple[str, ...]) -> list[Commission]:
    return list(db.session.scalars(select(Commission).where(Commission.order_id == order_id,
                                                            Commission.status.in_(statuses))
                                   .order_by(Commission.id).with_for_update()))


def ensure_receivables(agent_ids: list[int]) -> None:
    """Open agent:<id>:receivable (non-cached) for these agents if missing; concurrent openers do not clash."""
    if not agent_ids:
        return
    now = utcnow()
    db.session.connection().execute(
        ledger._insert(Account).values([
            {"code": agent_account_code(a, "receivable"), "kind": "receivable", "agent_id": a, "cached": False,
             "balance": 0, "created_at": now} for a in sorted(set(agent_ids))])
        .on_conflict_do_nothing(index_elements=["code"]))


def receivable_owed(agent_ids: list[int]) -> dict[int, int]:
    """What each agent owes (positive), from its receivable postings; agents without debt are left out."""
    if not agent_ids:
        return {}
    rows = db.session.connection().execute(
        select(Account.agent_id, func.coalesce(func.sum(Posting.amount), 0))
        .select_from(Account).join(Posting, Posting.account_id == Account.id)
        .where(Account.kind == "receivable", Account.agent_id.in_(agent_ids))
        .group_by(Account.agent_id)).all()
    return {agent_id: -int(total) for agent_id, total in rows if total < 0}


def reverse_for_order(order, extra_lock: list[str] | None = None, actor_id: int | None = None) -> int:
    """Reverse every commission of a refunded order, in the caller's transaction. Returns the amount reversed.

    `extra_lock`: other cached accounts the caller is about to post to (the buyer's wallet on a refund): they are
    locked in the same ascending-id call, so this never waits on one lock while holding another out of order.
    """
    rows = _lock_order_commissions(order.id, ("pending", "frozen", "settled"))
    if not rows:
        if extra_lock:
            ledger.lock_accounts(extra_lock)
        return 0
    settled_agents = [c.agent_id for c in rows if c.status == "settled"]
    ensure_receivables(settled_agents)
    upline_rows = [c for c in rows if c.level != SHOP_PROFIT_LEVEL]
    shop_rows = [c for c in rows if c.level == SHOP_PROFIT_LEVEL]
    codes = set(extra_lock or []) | {EXPENSE} | ({SHOP_EXPENSE} if shop_rows else set())
    for c in rows:
        kind = {"pending": "pending", "frozen": "frozen", "settled": "wallet"}[c.status]
        codes.add(agent_account_code(c.agent_id, kind))
        if c.status == "settled":
            codes.add(agent_account_code(c.agent_id, "receivable"))
    locked = ledger.lock_accounts(sorted(codes))
    # Commissions and a shop's profit go back in a journal each, under the one lock taken above.
    # i18n-keep: data
    for group, expense, key, kind, memo in (
            (upline_rows, EXPENSE, f"commission:{order.order_no}:reverse", "commission_reversal", "佣金冲回"),
            (shop_rows, SHOP_EXPENSE, f"shopprofit:{order.order_no}:reverse", "shop_profit_reversal", "分站利润冲回")):
        if group:
            locked = _post_reversal(order, group, expense, key, kind, f"{memo} {order.order_no}", actor_id, locked)
    now = utcnow()
    for current in sorted({c.status for c in rows}):
        ids = [c.id for c in rows if c.status == current]
        states.move_all(COMMISSION_STATES, current, "reversed", Commission.id.in_(ids), expect=len(ids),
                        reversed_at=now)
    for c in rows:
        db.session.expire(c)
    return sum(c.amount for c in rows)


def _post_reversal(order, rows: list[Commission], expense: str, key: str, kind: str, memo: str,
                   actor_id: int | None, locked: dict) -> dict:
    """One reversal journal for `rows`: pending/frozen back to `expense`; settled from the wallet as far as it holds,
    the rest a receivable. Returns `locked` with the balances this journal left (for a next one)."""
    lines = [Line(expense, sum(c.amount for c in rows))]
    for c in rows:
        if c.status in ("pending", "frozen"):
            lines.append(Line(agent_account_code(c.agent_id, c.status), -c.amount))
        else:
            wallet = agent_account_code(c.agent_id, "wallet")
            take = min(locked[wallet][2], c.amount)
            if take:
                lines.append(Line(wallet, -take))
            if c.amount - take:
                lines.append(Line(agent_account_code(c.agent_id, "receivable"), -(c.amount - take)))
    ledger.post_journal(key, kind, lines, memo=memo, order_id=order.id, actor_id=actor_id, locked=locked)
    after = dict(locked)
    for ln in lines:
        acc_id, cached, balance = after[ln.account_code]
        after[ln.account_code] = (acc_id, cached, balance + ln.amount if cached else balance)
    return after


def _move_order_commissions(order, src: str, dst: str, key: str, memo: str, actor_id: int | None) -> int:
    rows = _lock_order_commissions(order.id, (src,))
    if not rows:
        return 0
    codes = sorted({agent_account_code(c.agent_id, k) for c in rows for k in ("pending", "frozen")})
    locked = ledger.lock_accounts(codes)
    lines = []
    for c in rows:
        lines += [Line(agent_account_code(c.agent_id, src), -c.amount),
                  Line(agent_account_code(c.agent_id, dst), c.amount)]
    ledger.post_journal(key, f"commission_{'freeze' if dst == 'frozen' else 'release'}", lines, memo=memo,
                        order_id=order.id, actor_id=actor_id, locked=locked)
    states.move_all(COMMISSION_STATES, src, dst, Commission.id.in_([c.id for c in rows]), expect=len(rows))
    for c in rows:
        db.session.expire(c)
    return sum(c.amount for c in rows)


def freeze_for_dispute(order, actor_id: int | None = None) -> int:
    """A dispute was filed: the order's pending commissions move to frozen (status `frozen`)."""
    return _move_order_commissions(order, "pending", "frozen", f"dispute:{order.order_no}:commission-freeze",
                                   f"维权冻结佣金 {order.order_no}", actor_id)  # i18n-keep: data


def release_after_dispute(order, actor_id: int | None = None) -> int:
    """A dispute was rejected: frozen commissions go back to pending (and settle when due)."""
    return _move_order_commissions(order, "frozen", "pending", f"dispute:{order.order_no}:commission-release",
                                   f"维权解冻佣金 {order.order_no}", actor_id)  # i18n-keep: data

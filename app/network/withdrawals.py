"""提现 (withdrawals): request (wallet → frozen), review (approve / reject), payout by a job through the adapter.

Journals: `withdrawal:<no>:freeze` (wallet → frozen), `withdrawal:<no>:release` (frozen → wallet, on a reject or
a failed payout), `withdrawal:<no>:paid` (frozen → platform:payouts + platform:fees). Each key posts once, and
the status moves by guarded steps under the withdrawal's row lock: a job run twice pays once. A withdrawal left
paying (the bank did not answer in time, or the worker died mid-call) is resolved by the withdrawal-poll job, which
asks the bank for the transfer's status (payout.query) and books it through the same guarded step (poll_paying);
a transfer the bank still does not know at a later ask never reached it, and the payout job sends it again under
the same request number, which the bank pays at most once.
"""
from __future__ import annotations

import json
import logging
import secrets as pyrandom
from datetime import timedelta

from flask import current_app
from flask_babel import gettext, lazy_gettext
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from app import states
from app.agents.errors import AgentInactive
from app.agents.models import Agent
from app.audit import service as audit
from app.audit.models import AuditEntry
from app.clock import business_day_start, utcnow
from app.errors import KamengError, NotFound, ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.errors import InsufficientBalance
from app.ledger.service import Line, agent_account_code
from app.money import apply_rate, format_fen
from app.network import payout, realname
from app.network.models import WITHDRAWAL_STATES, RealNameVerification, Withdrawal
from app.payments.models import WalletTopUp
from app.risk import agents as risk_agents

log = logging.getLogger(__name__)
STATUS_TEXT = {
    "pending_review": lazy_gettext("待审核"),
    "rejected": lazy_gettext("已驳回"),
    "approved": lazy_gettext("已批准，待打款"),
    "paying": lazy_gettext("打款中"),
    "paid": lazy_gettext("已打款"),
    "failed": lazy_gettext("打款失败，已退回"),
}
# Requests that count toward the daily limit: everything not given back.
COUNTED = ("pending_review", "approved", "paying", "paid")


class WithdrawalRefused(KamengError):
    code = "withdrawal_refused"


class InvalidReview(KamengError):
    code = "invalid_review"
    status = 409


def new_withdrawal_no() -> str:
    return "W" + utcnow().strftime("%y%m%d") + f"{pyrandom.randbelow(10 ** 12):012d}"


def _parse_amount(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValidationError(gettext("提现金额必须是正的整数分"))
    return amount


def request_withdrawal(agent_id: int, amount: object, ip: str | None = None, device: str | None = None
                       ) -> Withdrawal:
    """Check every rule, then move the amount from the wallet to frozen. Commits; any refusal writes nothing.

    Only earnings are withdrawable: the wallet less its unspent top-ups (laundering). Risk control (event
    withdrawal) decides last: a block refuses; a review is recorded on the request (its decision names the
    withdrawal number) and its reasons are shown in the review queue (every withdrawal is reviewed by staff)."""
    try:
        w = _request(agent_id, amount, ip, device)
        db.session.commit()
        return w
    except Exception:
        db.session.rollback()
        raise


def _request(agent_id: int, amount: object, ip: str | None, device: str | None) -> Withdrawal:
    amount = _parse_amount(amount)
    agent = db.session.get(Agent, agent_id, options=[joinedload(Agent.tier)])
    if agent is None or not agent.active:
        raise AgentInactive(gettext("代理不存在或已停用"))
    risk_agents.check_not_held(agent)
    tier = agent.tier
    if not tier.may_withdraw:
        raise WithdrawalRefused(gettext("当前等级「%(name)s」不可提现", name=tier.name), code="tier_no_withdraw")
    rec = db.session.scalar(select(RealNameVerification).where(RealNameVerification.agent_id == agent.id))
    if rec is None or rec.status != "verified":
        raise realname.RealNameRequired(gettext("请先完成实名认证再提现"))
    if amount < tier.min_withdrawal:
        raise WithdrawalRefused(gettext("最低提现金额为 %(min_withdrawal)s",
                                        min_withdrawal=format_fen(tier.min_withdrawal)),
                                code="below_minimum")
    fee = apply_rate(amount, tier.withdrawal_fee_bp)
    net = amount - fee
    if net <= 0:
        raise WithdrawalRefused(gettext("扣除手续费后到账金额必须大于 0"), code="below_minimum")

    wallet, frozen = agent_account_code(agent.id, "wallet"), agent_account_code(agent.id, "frozen")
    # The wallet row lock serializes this agent's requests: the daily total and the balance are read under it.
    accounts = ledger.lock_accounts([wallet, frozen])
    limit = current_app.config.get("WITHDRAWAL_DAILY_LIMIT") or 0
    if limit:
        today = db.session.scalar(select(func.coalesce(func.sum(Withdrawal.amount), 0)).where(
            Withdrawal.agent_id == agent.id, Withdrawal.status.in_(COUNTED),
            Withdrawal.created_at >= business_day_start()))
        if today + amount > limit:
            raise WithdrawalRefused(gettext("超出每日提现限额 %(limit)s（今日已申请 %(today)s）",
                                            limit=format_fen(limit),
                                            today=format_fen(today)), code="daily_limit")
    balance = accounts[wallet][2]
    if balance < amount:
        raise InsufficientBalance(gettext("余额不足：申请 %(amount)s，可用 %(balance)s", amount=format_fen(amount),
                                          balance=format_fen(balance)))
    # Read under the wallet lock: top-up credits and purchases change it under that lock too.
    unspent = db.session.scalar(select(Agent.topup_unspent).where(Agent.id == agent.id)) or 0
    if amount > balance - unspent:
        raise WithdrawalRefused(
            gettext("充值未消费的资金不可提现：钱包 %(balance)s 中 %(unspent)s 来自充值，最多可提现 %(value)s",
                    balance=format_fen(balance),
                    unspent=format_fen(unspent), value=format_fen(max(balance - unspent, 0))),
            code="topup_not_withdrawable")
    event, decision = _risk_check(agent, rec, amount, balance, unspent, ip, device)
    w = Withdrawal(withdrawal_no=new_withdrawal_no(), agent_id=agent.id, amount=amount, fee=fee, net_amount=net,
                   bank_card_masked=rec.bank_card_masked, status="pending_review", created_at=utcnow())
    db.session.add(w)
    db.session.flush()
    _after_risk_check(w, event, decision)
    ledger.post_journal(f"withdrawal:{w.withdrawal_no}:freeze", "withdrawal_freeze",
                        # i18n-keep: data
                        [Line(wallet, -amount), Line(frozen, amount)], memo=f"提现申请 {w.withdrawal_no}",
                        locked=accounts)
    return w


def _risk_check(agent: Agent, rec: RealNameVerification, amount: int, balance: int, unspent: int,
                ip: str | None, device: str | None):
    """Risk control before anything is written: the agent's lists (login, address, device, its real name's ID
    number, phone and bank card), and the rules on a withdrawal soon after a top-up or a fresh verification."""
    from app.crypto import decrypt
    from app.risk import service as risk

    now = utcnow()
    last_topup = db.session.scalar(select(func.max(WalletTopUp.paid_at)).where(
        WalletTopUp.agent_id == agent.id, WalletTopUp.status == "paid"))
    values = {"minutes_since_topup": (now - last_topup).total_seconds() / 60 if last_topup else 1e9,
              "verified_age_hours": (now - rec.verified_at).total_seconds() / 3600 if rec.verified_at else 1e9,
              "topup_share": min(unspent / balance, 1.0) if balance > 0 else 0.0}
    event = risk.RiskInput(event="withdrawal", amount=amount, ip=ip, device=device, agent_id=agent.id,
                           agent_login=agent.user.username if agent.user is not None else None,
                           tier_id=agent.tier_id, id_number=decrypt(rec.id_number_enc),
                           phone=decrypt(rec.phone_enc), payment_account=decrypt(rec.bank_card_enc),
                           values=values, enforce_limits=False)  # WITHDRAWAL_DAILY_LIMIT is the limit here
    decision = risk.evaluate(event)
    decision.raise_if_blocked()
    return event, decision


def _after_risk_check(w: Withdrawal, event, decision) -> None:
    from app.risk import service as risk

    risk.attach_order(decision.id, w.withdrawal_no)  # the decision names what it was about
    risk.record("withdrawal", event)
    if decision.outcome == "review":
        audit.record("risk.withdrawal.hold", "withdrawal", w.id, None,
                     {"risk_decision_id": decision.id, "outcome": "review"}, reason=decision.reasons[:255] or None)


def risk_reasons(rows: list[Withdrawal]) -> dict[str, str]:
    """withdrawal number -> why risk control sent it to review (for the review queue)."""
    from app.risk.models import RiskDecision

    numbers = [w.withdrawal_no for w in rows]
    if not numbers:
        return {}
    out = {}
    for decision in db.session.scalars(select(RiskDecision).where(RiskDecision.event == "withdrawal",
                                                                  RiskDecision.order_no.in_(numbers),
                                                                  RiskDecision.outcome == "review")):
        hits = json.loads(decision.hits)
        # i18n-keep: data
        out[decision.order_no] = "；".join(h["reason"] for h in hits if not h.get("shadow")) or "风控审核"
    return out


def _locked(withdrawal_id: int) -> Withdrawal:
    w = db.session.scalar(select(Withdrawal).where(Withdrawal.id == withdrawal_id).with_for_update()
                          .execution_options(populate_existing=True))
    if w is None:
        raise NotFound(gettext("提现申请不存在"))
    return w


def _release(w: Withdrawal, memo: str) -> None:
    ledger.post_journal(f"withdrawal:{w.withdrawal_no}:release", "withdrawal_release",
                        [Line(agent_account_code(w.agent_id, "frozen"), -w.amount),
                         Line(agent_account_code(w.agent_id, "wallet"), w.amount)], memo=memo)


def move(w: Withdrawal, new: str, **values: object) -> None:
    """The one place a withdrawal's status changes (WITHDRAWAL_STATES), guarded on the status the caller holds
    (under the row lock). Does not commit."""
    states.move(WITHDRAWAL_STATES, w.id, w.status, new, **values)


def approve(withdrawal_id: int, actor_id: int | None) -> Withdrawal:
    """Approve a request under review; the payout job is queued after the commit."""
    try:
        w = _locked(withdrawal_id)
        if w.status != "pending_review":
            raise InvalidReview(gettext("该提现当前状态为「%(value)s」，不能批准",
                                        value=STATUS_TEXT.get(w.status, w.status)))
        move(w, "approved", reviewed_by_id=actor_id, reviewed_at=utcnow())
        audit.record("withdrawal.approve", "withdrawal", w.id, {"status": "pending_review"},
                     {"status": "approved", "amount": w.amount}, actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    schedule_payout(w.id, w.withdrawal_no)
    return w


def reject(withdrawal_id: int, actor_id: int | None, reason: str | None) -> Withdrawal:
    """Reject with a reason: the frozen amount goes back to the wallet."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError(gettext("请填写驳回原因"))
    try:
        w = _locked(withdrawal_id)
        if w.status != "pending_review":
            raise InvalidReview(gettext("该提现当前状态为「%(value)s」，不能驳回",
                                        value=STATUS_TEXT.get(w.status, w.status)))
        move(w, "rejected", reviewed_by_id=actor_id, reviewed_at=utcnow(), review_reason=reason[:255])
        _release(w, f"提现驳回 {w.withdrawal_no}")  # i18n-keep: data
        audit.record("withdrawal.reject", "withdrawal", w.id, {"status": "pending_review"},
                     {"status": "rejected"}, reason=reason[:255], actor_id=actor_id)
        db.session.commit()
        return w
    except Exception:
        db.session.rollback()
        raise


def retry(withdrawal_id: int, actor_id: int | None) -> Withdrawal:
    """Queue the payout again for one whose result is unknown (paying after a timeout) or never ran (approved)."""
    w = db.session.get(Withdrawal, withdrawal_id)
    if w is None:
        raise NotFound(gettext("提现申请不存在"))
    if w.status not in ("approved", "paying"):
        raise InvalidReview(gettext("该提现当前状态为「%(value)s」，无需重试",
                                    value=STATUS_TEXT.get(w.status, w.status)))
    audit.record("withdrawal.retry", "withdrawal", w.id, None, {"status": w.status}, actor_id=actor_id)
    db.session.commit()
    schedule_payout(w.id, w.withdrawal_no)
    return w


def schedule_payout(withdrawal_id: int, withdrawal_no: str) -> None:
    from app.queueing import enqueue

    try:
        enqueue("payout", withdrawal_id, job_id=f"payout-{withdrawal_no}", queue="default")
    except Exception:  # Redis down: the withdrawal stays approved; an admin retry queues it again
        log.exception("payout of %s not queued; retry from the review queue", withdrawal_no)


def pay(withdrawal_id: int) -> str:
    """The payout job: approved → paying → paid / failed (funds back). A timeout leaves it paying (unknown).

    Idempotent: only approved or paying withdrawals are sent, the bank dedupes on the withdrawal number, and the
    result is booked under the row lock with once-only journal keys. Returns the status it left.
    """
    try:
        w = _locked(withdrawal_id)
        if w.status not in ("approved", "paying"):
            db.session.rollback()
            return w.status
        if w.status != "paying":  # paying: a run cut off (or a timeout) sends it again, the bank dedupes
            move(w, "paying")
        w.payout_ref = w.payout_ref or w.withdrawal_no
        no, agent_id, net = w.withdrawal_no, w.agent_id, w.net_amount
        name, card = realname.bank_card_of(agent_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise

    result = payout.transfer(no, net, card, name)
    return _book(withdrawal_id, no, result)


def _book(withdrawal_id: int, no: str, result: payout.PayoutResult) -> str:
    """Book a bank answer under the row lock: only a withdrawal still paying moves; the journal keys post once."""
    try:
        w = _locked(withdrawal_id)
        if w.status != "paying":
            db.session.rollback()
            return w.status
        if result.status == "success":
            lines = [Line(agent_account_code(w.agent_id, "frozen"), -w.amount), Line("platform:payouts", w.net_amount),
                     Line("platform:fees", w.fee)]
            # i18n-keep: data
            ledger.post_journal(f"withdrawal:{no}:paid", "withdrawal_paid", lines, memo=f"提现打款 {no}")
            move(w, "paid", paid_at=utcnow(), failure_reason=None)
            w.payout_ref = result.ref or w.payout_ref
        elif result.status == "failed":
            _release(w, f"提现打款失败退回 {no}")  # i18n-keep: data
            move(w, "failed", failure_reason=(result.reason or "打款失败 (payout failed)")[:255])  # i18n-keep: data
        else:
            w.failure_reason = (result.reason or "打款结果未知 (payout result unknown)")[:255]  # i18n-keep: data
        db.session.commit()
        return w.status
    except Exception:
        db.session.rollback()
        raise


POLL_ACTION = "withdrawal.poll"


def _polled_since(withdrawal_id: int, since=None) -> bool:
    """Whether the poll asked the bank about this withdrawal after `since` (at all, when None)."""
    query = select(AuditEntry.id).where(AuditEntry.action == POLL_ACTION, AuditEntry.target_type == "withdrawal",
                                        AuditEntry.target_id == str(withdrawal_id))
    if since is not None:
        query = query.where(AuditEntry.created_at > since)
    return db.session.scalar(query.limit(1)) is not None


def poll_one(withdrawal_id: int, now=None) -> str | None:
    """Ask the bank about one paying withdrawal and book the answer (paid / failed) once; unknown leaves it paying.

    Backoff: a withdrawal is asked at most once per WITHDRAWAL_POLL_SECONDS (at least 60 s); each ask is an audit
    entry `withdrawal.poll`, written and committed under the row lock before the HTTP call, so two pollers never
    ask twice and a concurrent admin retry (the payout job) and the poll serialize on the row: whichever books
    first wins, the other sees the status is no longer paying. Returns the status left, None when skipped, and
    "resent" when the payout job was queued again (see below).

    Not found at the bank on a second ask (a poll interval after the first, so no payout call of ours can still be
    on its way): the transfer never reached the bank (the worker died before sending it, or the request was lost).
    The payout job sends it again under the same request number; the bank dedupes on it, so even a request that
    did arrive late is paid once. A first "not found" only waits: the bank may not have booked it yet.
    """
    now = now or utcnow()
    gap = max(60, int(current_app.config.get("WITHDRAWAL_POLL_SECONDS", 60) or 60))
    try:
        w = _locked(withdrawal_id)
        if w.status != "paying" or _polled_since(w.id, now - timedelta(seconds=gap)):
            db.session.rollback()
            return None
        no, asked_before = w.withdrawal_no, _polled_since(w.id)
        entry = audit.record(POLL_ACTION, "withdrawal", w.id, None, {"status": "paying"}, actor_id=None)
        entry.created_at = now
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    result = payout.query(no)
    if result.status == "not_found" and asked_before:
        resend = payout.PayoutResult("unknown", reason=gettext("银行未收到该笔打款，已按原单号重新发送"))
        status = _book(withdrawal_id, no, resend)
        if status != "paying":
            return status
        log.warning("withdrawal %s never reached the bank: the payout is sent again under its number", no)
        schedule_payout(withdrawal_id, no)
        return "resent"
    if result.status not in ("success", "failed"):
        log.info("withdrawal %s still unknown at the bank: %s", no, result.reason)
    return _book(withdrawal_id, no, result)


REQUEUE_APPROVED_AFTER = timedelta(minutes=2)


def poll_paying(now=None, limit: int = 500) -> dict:
    """The withdrawal-poll job: every withdrawal left paying (oldest first), asked with backoff (see poll_one).
    "resent": payouts the bank never received, queued again (inline without Redis: already booked then)."""
    now = now or utcnow()
    # Approved but never handed to a worker (Redis was down at approval): queue the payout again. pay() is
    # idempotent and the job id is deterministic, so a payout that is merely slow is not sent twice.
    stranded = db.session.execute(select(Withdrawal.id, Withdrawal.withdrawal_no).where(
        Withdrawal.status == "approved", Withdrawal.reviewed_at < now - REQUEUE_APPROVED_AFTER)
        .order_by(Withdrawal.id).limit(limit)).all()
    ids = list(db.session.scalars(select(Withdrawal.id).where(Withdrawal.status == "paying")
                                  .order_by(Withdrawal.id).limit(limit)))
    db.session.rollback()
    for withdrawal_id, withdrawal_no in stranded:
        schedule_payout(withdrawal_id, withdrawal_no)
    report = {"requeued": len(stranded), "paying": len(ids), "asked": 0, "paid": 0, "failed": 0, "unknown": 0,
              "resent": 0}
    for withdrawal_id in ids:
        status = poll_one(withdrawal_id, now)
        if status is None:
            continue
        report["asked"] += 1
        report[{"paid": "paid", "failed": "failed", "resent": "resent"}.get(status, "unknown")] += 1
    return report


def withdrawals_of(agent_id: int, limit: int = 50) -> list[Withdrawal]:
    return list(db.session.scalars(select(Withdrawal).where(Withdrawal.agent_id == agent_id)
                                   .order_by(Withdrawal.id.desc()).limit(limit)))


def review_queue() -> list[Withdrawal]:
    return list(db.session.scalars(select(Withdrawal).options(joinedload(Withdrawal.agent))
                                   .where(Withdrawal.status.in_(("pending_review", "approved", "paying")))
                                   .order_by(Withdrawal.id)))

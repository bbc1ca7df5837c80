"""Wallet top-ups (充值): an agent pays through a channel and the verified notification credits its wallet once.

A top-up number is "T" + yymmdd + 12 random digits; order numbers are digits only, so the two never collide and
`/pay/notify/<channel>` (same endpoint, same verification) routes a notification by its number's first letter
(app.payments.service.apply_payment calls apply_topup_payment here, registered below).

The credit is the journal `pay:<channel>:<trade_no>` (platform:clearing:<channel> −A, agent:<id>:wallet +A)
with a Payment row (topup_id) under the unique (channel, trade_no): a duplicate notification changes nothing.
A payment arriving after the top-up closed unpaid is still credited (the money is the agent's and nothing was
reserved); a second, different payment for a top-up already paid is refunded through its channel.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

from flask import current_app
from flask_babel import gettext, lazy_gettext
from sqlalchemy import select, update

from app import states
from app.agents.errors import AgentInactive
from app.agents.models import Agent
from app.clock import utcnow
from app.errors import ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.service import Line
from app.money import format_fen, parse_yuan
from app.payments import service as payments
from app.payments.channels.base import Notification
from app.payments.models import TOPUP_STATES, WalletTopUp

MIN_TOPUP = 100  # ¥1.00
MAX_TOPUP = 5_000_000  # ¥50,000.00
PREFIX = "T"
STATUS_TEXT = {
    "pending_payment": lazy_gettext("待支付"),
    "paid": lazy_gettext("已到账"),
    "closed": lazy_gettext("已关闭"),
}


def is_topup_no(number) -> bool:
    return isinstance(number, str) and number.startswith(PREFIX)


def new_topup_no() -> str:
    return PREFIX + utcnow().strftime("%y%m%d") + f"{secrets.randbelow(10 ** 12):012d}"


def parse_amount(text) -> int:
    """A form's amount in yuan ('100', '¥12.50', '12元') -> fen, within [¥1, ¥50,000]."""
    if not isinstance(text, str):
        raise ValidationError(gettext("请填写充值金额"))
    try:
        fen = parse_yuan(text.strip())
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if not MIN_TOPUP <= fen <= MAX_TOPUP:
        raise ValidationError(gettext("充值金额须在 %(min_topup)s 至 %(max_topup)s 之间",
                                      min_topup=format_fen(MIN_TOPUP),
                                      max_topup=format_fen(MAX_TOPUP)))
    return fen


def start_topup(agent_id: int, amount_text, channel, base_url: str, ip: str | None = None,
                device_id: object = None) -> tuple[WalletTopUp, str]:
    """Create the top-up (unpaid) and start its payment; returns it and where the agent pays. Risk control
    (event wallet_topup) decides first: a block refuses and writes nothing."""
    from app.orders.service import clean_device_id
    amount = parse_amount(amount_text)
    if channel not in payments.enabled_channels():
        raise ValidationError(gettext("支付方式不可用：%(channel)s", channel=repr(channel)))
    _risk_check(agent_id, amount, ip, clean_device_id(device_id))
    gateway = payments.get_channel(channel)
    topup = WalletTopUp(topup_no=new_topup_no(), agent_id=agent_id, amount=amount, channel=channel,
                        status="pending_payment")
    db.session.add(topup)
    db.session.commit()
    expires_at = topup.created_at + timedelta(minutes=int(current_app.config["ORDER_EXPIRE_MINUTES"]))
    # i18n-keep: data
    pay_url = payments.start_payment(gateway, topup.topup_no, amount, f"钱包充值 {format_fen(amount)}", base_url,
                                     expires_at, return_path="/portal/topup", topup_id=topup.id)
    return topup, pay_url


def _risk_event(agent: Agent, amount: int, ip: str | None = None, device: str | None = None):
    from app.risk import service as risk

    age_hours = (utcnow() - agent.created_at).total_seconds() / 3600 if agent.created_at else 1e9
    return risk.RiskInput(event="wallet_topup", amount=amount, ip=ip, device=device, agent_id=agent.id,
                          agent_login=agent.user.username if agent.user is not None else None,
                          tier_id=agent.tier_id, values={"account_age_hours": age_hours},
                          enforce_limits=False)  # the per-order and daily limits are for purchases


def _risk_check(agent_id: int, amount: int, ip: str | None, device: str | None) -> None:
    from app.risk import service as risk

    agent = db.session.get(Agent, agent_id)
    if agent is None or not agent.active:
        raise AgentInactive(gettext("代理不存在或已停用"))
    risk.evaluate(_risk_event(agent, amount, ip, device)).raise_if_blocked()


def apply_topup_payment(code: str, note: Notification, remote_addr: str | None = None,
                        confirmed_by: int | None = None) -> str:
    """Credit a verified top-up payment once; commits. Returns the outcome written to the notification log."""
    from app.payments import refunds
    from app.payments.service import BUYER_FUNDS, _log, clearing_account, mark_channel_order_paid, record_payment

    def log(outcome: str, detail: str | None = None) -> str:
        return _log(code, note.order_no, note.trade_no, note.amount, outcome, detail, remote_addr)

    if not note.succeeded:
        return log("not_paid", "status is not success")
    topup = db.session.scalar(select(WalletTopUp).where(WalletTopUp.topup_no == note.order_no).with_for_update())
    if topup is None:
        db.session.rollback()
        return log("unknown_order", "no such top-up")
    if topup.channel != code or note.currency != "CNY" or note.amount != topup.amount:
        db.session.rollback()
        return log("amount_mismatch", f"top-up {topup.channel}/{topup.amount} CNY, "
                                      f"notification {code}/{note.amount} {note.currency}")
    payment = record_payment(code, note, confirmed_by, topup_id=topup.id)
    if payment is None:
        db.session.rollback()
        return log("duplicate")
    if topup.status == "paid":
        # A second payment for the same top-up: the wallet was credited once already; the money goes back.
        ledger.post_journal(f"pay:{code}:{note.trade_no}", "payment",
                            [Line(clearing_account(code), -note.amount), Line(BUYER_FUNDS, note.amount)],
                            memo=f"{topup.topup_no} 重复支付", actor_id=confirmed_by)  # i18n-keep: data
        # i18n-keep: data
        refunds.request_channel_refund(payment, "充值单已支付，自动退款 (second payment for a paid top-up)")
        db.session.commit()
        return log("double_paid_refunded")
    late = topup.status == "closed"
    wallet = ledger.agent_account_code(topup.agent_id, "wallet")
    ledger.post_journal(f"pay:{code}:{note.trade_no}", "topup",
                        [Line(clearing_account(code), -note.amount), Line(wallet, note.amount)],
                        memo=f"{topup.topup_no} 钱包充值", actor_id=confirmed_by)  # i18n-keep: data
    _count_unspent(topup.agent_id, note.amount)
    move(topup.id, topup.status, "paid", paid_at=utcnow())
    mark_channel_order_paid(code, topup.topup_no)
    db.session.commit()
    return log("accepted", "paid after the top-up had closed: credited" if late else None)


def _count_unspent(agent_id: int, amount: int) -> None:
    """Topped-up money is not withdrawable until spent (laundering): it joins agent.topup_unspent, under the wallet
    lock the credit just took; purchases spend it first (app.orders.service.spend_topup). Counted for the
    velocity rules too."""
    from app.risk import service as risk

    db.session.execute(update(Agent).where(Agent.id == agent_id)
                       .values(topup_unspent=Agent.topup_unspent + amount)
                       .execution_options(synchronize_session=False))
    agent = db.session.get(Agent, agent_id)
    risk.record("topup", _risk_event(agent, amount))


def expire_unpaid(limit: int = 1000) -> int:
    """Scheduled: close top-ups unpaid after ORDER_EXPIRE_MINUTES, after closing their payment at the channel (a
    guarded update: a paid one stays paid)."""
    cutoff = utcnow() - timedelta(minutes=int(current_app.config["ORDER_EXPIRE_MINUTES"]))
    rows = db.session.execute(select(WalletTopUp.id, WalletTopUp.topup_no).where(
        WalletTopUp.status == "pending_payment", WalletTopUp.created_at < cutoff).limit(limit)).all()
    db.session.rollback()
    closed = 0
    for topup_id, topup_no in rows:
        if not payments.close_at_channel(topup_no):
            continue
        try:
            move(topup_id, "pending_payment", "closed")
        except states.LostMove:  # paid meanwhile: it stays paid
            db.session.rollback()
            continue
        db.session.commit()
        closed += 1
    return closed


def move(topup_id: int, current: str, new: str, **values: object) -> None:
    """The one place a top-up's status changes (TOPUP_STATES), guarded on `current`. Does not commit."""
    states.move(TOPUP_STATES, topup_id, current, new, **values)


def topups_of(agent_id: int, limit: int = 50) -> list[WalletTopUp]:
    return list(db.session.scalars(select(WalletTopUp).where(WalletTopUp.agent_id == agent_id)
                                   .order_by(WalletTopUp.id.desc()).limit(limit)))


def get_topup(topup_no: str) -> WalletTopUp | None:
    if not is_topup_no(topup_no):
        return None
    return db.session.scalar(select(WalletTopUp).where(WalletTopUp.topup_no == topup_no[:32]))


def payment_state(topup_no: str) -> dict | None:
    """What a top-up's waiting payment page shows (app.payments.service.payment_state)."""
    topup = get_topup(topup_no)
    if topup is None:
        return None
    return {"paid": topup.status == "paid", "closed": topup.status == "closed", "next": "/portal/topup"}


payments.register_other_payment(PREFIX, apply_topup_payment, payment_state)

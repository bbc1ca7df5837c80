"""Direct top-ups (直充): a paid order goes to the best supplier; its outcome delivers it, fails it over to the
next supplier, or (when none is left) fails and refunds it.

The rules, in one place:
- A paid direct order's money sits in platform:buyer_funds until the outcome. `start_recharge()`
  (app.suppliers.service) writes the outbox message in the paying transaction; its job (`recharge-<order_no>`,
  queue high) calls `run()`.
- `run()` is idempotent and safe to run twice, concurrently, or racing a poll or a callback: every decision is taken
  under the order's row lock, and the row lock is never held across HTTP (the attempt is committed first).
- An order has at most one open attempt. While one is open (submitting / submitted / processing / unknown) no other
  supplier is tried: the first may still credit the account. A timeout or a network error is never a failure:
  the attempt becomes `unknown` and is resolved by a query (the scheduled poll, with backoff) or by a callback,
  whichever comes first. An `unknown` attempt is never refunded automatically; after
  RECHARGE_UNKNOWN_ALERT_MINUTES an event asks support to check with the supplier.
- A definite failure tries the next supplier; with none left the order is marked failed and refunded in the same
  transaction. A success books the sale (buyer_funds → supplier, fees, revenue), accrues commissions, stores any
  card secrets the upstream delivered and marks the order delivered, once.
- Every step writes a RechargeEvent, so support sees the order's timeline.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from flask import current_app
from flask_babel import gettext
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app import crypto, states
from app.catalog.models import CardSecret, Supplier
from app.clock import utcnow
from app.errors import KamengError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.models import Account
from app.ledger.service import BUYER_FUNDS
from app.money import apply_rate
from app.network import commissions
from app.orders import service as orders
from app.orders.errors import InvalidTransition
from app.orders.models import Order
from app.outbox import service as outbox
from app.outbox.models import OutboxMessage
from app.suppliers.adapters.base import (
    FAILED,
    NOT_FOUND,
    PROCESSING,
    SUBMITTED,
    SUCCESS,
    InvalidCallback,
    UpstreamResult,
    UpstreamUnreachable,
)
from app.suppliers.errors import AttemptNotFound, CallbackRejected, SupplierNotFound
from app.suppliers.models import ATTEMPT_STATES, RechargeAttempt, RechargeEvent
from app.suppliers.service import RECHARGE_TOPIC, candidates, supplier_or_none

log = logging.getLogger(__name__)

OPEN_STATUSES = ("submitting", "submitted", "processing", "unknown")
ACTIVE_ORDER_STATUSES = ("paid", "delivering")
BACKOFF_FIRST = 5  # seconds; then 10, 20, 40 ... up to BACKOFF_MAX
BACKOFF_MAX = 300
# A poll handed to a worker owns its attempt this long; if the job is lost (Redis down) the attempt is due again.
POLL_LEASE = timedelta(minutes=2)


# --- entry: the paying transaction wrote the job (app.suppliers.service.start_recharge) --------------------

def _again(order: Order, after_attempt_id: int) -> None:
    """A poll or a callback found the attempt failed: the next supplier is tried by the recharge job."""
    outbox.write(RECHARGE_TOPIC, f"recharge:{order.order_no}:after:{after_attempt_id}",
                 {"order_id": order.id, "order_no": order.order_no})


@outbox.handler(RECHARGE_TOPIC, job_id=lambda payload: f"recharge-{payload['order_no']}")
def _run_message(message: OutboxMessage) -> None:
    message_id = message.id
    order_id = json.loads(message.payload)["order_id"]
    message.attempts += 1
    db.session.commit()
    run(order_id)
    message = db.session.get(OutboxMessage, message_id)
    if message.status == "pending":
        outbox.finish(message, "done")


# --- the job -----------------------------------------------------------------------------------------------

def run(order_id: int) -> str:
    """Move a paid direct order forward: submit to the next supplier, or ask the one that has it. Idempotent.

    Returns what happened last: delivered, refunded, pending, unknown, scheduled (an open attempt is not due yet),
    done (the order was already resolved).
    """
    db.session.rollback()  # start from a clean transaction: locks below must see the latest committed state
    outcome = "done"
    for _ in range(100):  # one turn per supplier at most; the bound only guards against a loop bug
        step = _next_step(order_id)
        if step is None:
            return outcome
        kind, attempt_id, outcome = step
        if kind == "stop":
            return outcome
        outcome = poll(attempt_id, in_place=True) if kind == "query" else _submit(attempt_id, in_place=True)
        if outcome != "failed_over":
            return outcome
    log.error("recharge of order %s did not settle after 100 steps", order_id)
    return outcome


def _next_step(order_id: int) -> tuple[str, int | None, str] | None:
    """Under the order's lock: what to do next. Commits before returning (no lock is held over HTTP)."""
    now = utcnow()
    order = _lock_order(order_id)
    if order is None or order.status not in ACTIVE_ORDER_STATUSES:
        db.session.commit()
        return None
    attempts = list(db.session.scalars(select(RechargeAttempt).where(RechargeAttempt.order_id == order.id)
                                       .order_by(RechargeAttempt.seq)))
    open_attempt = next((a for a in attempts if a.status in OPEN_STATUSES), None)
    if open_attempt is not None:
        # Never a second supplier while this one may still credit: ask it. 'submitting' means the job that
        # created it died before (or while) sending, or is sending now: the upstream dedupes on our order_no.
        if open_attempt.status == "submitting" or open_attempt.next_poll_at is None \
                or open_attempt.next_poll_at <= now:
            open_attempt.next_poll_at = now + POLL_LEASE  # the scheduled poll leaves it to us meanwhile
            db.session.commit()
            return "query", open_attempt.id, "pending"
        db.session.commit()
        return "stop", None, "scheduled"
    tried = {a.supplier_id for a in attempts}
    options = candidates(order.product_id, order.quantity, tried)
    if not options:
        detail = ("所有货源均充值失败，自动退款" if attempts else "无可用货源，自动退款")  # i18n-keep: data
        _fail_and_refund_locked(order, detail + " (no supplier left)")
        db.session.commit()
        return "stop", None, "refunded"
    mapping = options[0]
    supplier = mapping.supplier
    attempt = RechargeAttempt(order_id=order.id, supplier_id=supplier.id, seq=len(attempts) + 1,
                              upstream_code=mapping.upstream_code, cost=mapping.cost * order.quantity,
                              status="submitting", polls=0, created_at=now, updated_at=now,
                              # if this job dies before recording the answer, the poll asks after the timeout
                              next_poll_at=now + timedelta(seconds=supplier.timeout_seconds + BACKOFF_FIRST))
    db.session.add(attempt)
    db.session.flush()
    if attempts:
        # i18n-keep: data
        _event(order.id, attempt, "failover", "submitting", f"改由第 {attempt.seq} 个货源「{supplier.name}」充值")
    # i18n-keep: data
    _event(order.id, attempt, "submit", "submitting", f"提交到「{supplier.name}」({mapping.upstream_code})")
    if order.status == "paid":
        orders.transition(order.id, "delivering", current="paid")
    _set_upstream_status(order.id, "submitting")
    db.session.commit()
    return "submit", attempt.id, "pending"


def _submit(attempt_id: int, in_place: bool) -> str:
    """Send the attempt to its supplier (again: the upstream dedupes on our order_no) and apply the answer."""
    attempt = db.session.get(RechargeAttempt, attempt_id)
    order = db.session.get(Order, attempt.order_id)
    try:
        from app.suppliers.adapters import get_adapter

        adapter = get_adapter(attempt.supplier)
    except KamengError as exc:  # misconfigured: nothing was sent, so this supplier definitely did not credit
        # i18n-keep: data
        return _apply(attempt_id, UpstreamResult(FAILED, message=f"货源配置错误: {exc.message}"), "submit",
                      in_place)
    try:
        result = adapter.submit(order.order_no, attempt.upstream_code, order.account or "", order.quantity)
    except UpstreamUnreachable as exc:
        return _apply(attempt_id, None, "submit", in_place, error=str(exc) or type(exc).__name__)
    return _apply(attempt_id, result, "submit", in_place)


def poll(attempt_id: int, in_place: bool = False) -> str:
    """Ask the supplier where our order stands, and apply the answer (the scheduled poll and `run` use this)."""
    db.session.rollback()
    attempt = db.session.get(RechargeAttempt, attempt_id)
    if attempt is None or attempt.status not in OPEN_STATUSES:
        return "done"
    order = db.session.get(Order, attempt.order_id)
    try:
        from app.suppliers.adapters import get_adapter

        adapter = get_adapter(attempt.supplier)
        result = adapter.query(order.order_no)
    except UpstreamUnreachable as exc:
        return _apply(attempt_id, None, "poll", in_place, error=str(exc) or type(exc).__name__, polled=True)
    except KamengError as exc:  # misconfigured now, but it may have credited before: keep asking, never fail
        return _apply(attempt_id, None, "poll", in_place, error=exc.message, polled=True)
    if result.status == NOT_FOUND:
        # The upstream never received it (the submit was lost, or refused before being recorded): send it again.
        attempt.polls += 1
        # i18n-keep: data
        _event(order.id, attempt, "poll", "submitting", "上游查无此单，重新提交 (not found upstream: submitting again)")
        db.session.commit()
        return _submit(attempt_id, in_place)
    return _apply(attempt_id, result, "poll", in_place, polled=True)


# --- applying an answer ------------------------------------------------------------------------------------

def _apply(attempt_id: int, result: UpstreamResult | None, source: str, in_place: bool, *, error: str | None = None,
           polled: bool = False, remote_addr: str | None = None) -> str:
    """Record what the upstream said about an attempt, under the order's lock, once. Commits.

    `result` None: no usable answer (timeout, network). Returns delivered, failed_over (in place: the caller
    submits to the next supplier), refunded, pending, unknown or ignored (a duplicate or late answer).
    """
    now = utcnow()
    order_id = db.session.scalar(select(RechargeAttempt.order_id).where(RechargeAttempt.id == attempt_id))
    order = _lock_order(order_id)
    attempt = db.session.get(RechargeAttempt, attempt_id, populate_existing=True)
    status = result.status if result is not None else "unknown"
    message = (result.message if result is not None else error) or ""
    if attempt.status not in OPEN_STATUSES or order.status not in ACTIVE_ORDER_STATUSES:
        return _late(order, attempt, result, source, remote_addr)
    if result is not None and result.trade_no:
        attempt.upstream_trade_no = result.trade_no[:64]
    attempt.updated_at = now
    if status == SUCCESS:
        try:
            _apply_success(order, attempt, result, source, remote_addr)
        except (InvalidTransition, states.LostMove):  # SQLite (no row locks): another worker delivered it first
            db.session.rollback()
            return "ignored"
        db.session.commit()
        return "delivered"
    if status == FAILED:
        move(attempt, "failed", finished_at=now, next_poll_at=None, last_error=message[:255] or None)
        # i18n-keep: data
        _event(order.id, attempt, source, "failed", _detail("充值失败", attempt, message), remote_addr)
        _set_upstream_status(order.id, "failed")
        if not in_place:
            _again(order, attempt.id)
        db.session.commit()
        return "failed_over"
    # Still pending (submitted / processing), or no usable answer (unknown): ask again later.
    if status not in (SUBMITTED, PROCESSING):
        status = "unknown"
    if polled:
        attempt.polls += 1
    if status == "unknown" and attempt.status in ("submitted", "processing") and not polled:
        status = attempt.status  # a lost answer does not undo what the upstream told us before
    if status != attempt.status:
        move(attempt, status)
    attempt.next_poll_at = now + backoff(attempt.polls)
    if status == "unknown":
        attempt.last_error = message[:255] or None
    text = {"submitted": "已提交运营商", "processing": "处理中",  # i18n-keep: data
            "unknown": "无法确认结果（超时或网络错误），稍后查询"}[status]  # i18n-keep: data
    _event(order.id, attempt, source, status, _detail(text, attempt, message), remote_addr)
    _set_upstream_status(order.id, status)
    _alert_if_unknown_too_long(order, attempt, now)
    db.session.commit()
    return "unknown" if status == "unknown" else "pending"


def move(attempt: RechargeAttempt, new: str, **values: object) -> None:
    """The one place an attempt's status changes (ATTEMPT_STATES): guarded on the status the caller holds, and
    written with `values`. Does not commit."""
    states.move(ATTEMPT_STATES, attempt.id, attempt.status, new, **values)


def _apply_success(order: Order, attempt: RechargeAttempt, result: UpstreamResult, source: str,
                   remote_addr: str | None) -> None:
    """Deliver: the sale from buyer_funds at this supplier's cost, commissions, secrets, balance, delivered."""
    now = utcnow()
    supplier = db.session.get(Supplier, attempt.supplier_id)
    move(attempt, "success", finished_at=now, next_poll_at=None, last_error=None)
    order.supplier_id = supplier.id
    order.cost_total = attempt.cost
    order.service_fee = apply_rate(attempt.cost, supplier.service_fee_bp)
    db.session.flush()
    _ensure_supplier_account(supplier.id)
    # i18n-keep: data
    ledger.post_journal(f"order:{order.order_no}:sale", "sale", orders.sale_lines(order, BUYER_FUNDS),
                        memo=f"{order.product.name} × {order.quantity} 直充 {supplier.name}", order_id=order.id)
    commissions.accrue_for_delivered(order)
    stored = _store_secrets(order, result.card_secrets)
    if supplier.balance is not None:  # our local estimate until the next balance sync
        db.session.execute(update(Supplier).where(Supplier.id == supplier.id, Supplier.balance.is_not(None))
                           .values(balance=Supplier.balance - attempt.cost))
    _set_upstream_status(order.id, "success")
    orders.transition(order.id, "delivered", current=order.status)
    extra = f"，卡密 {stored} 张" if stored else ""  # i18n-keep: data
    # i18n-keep: data
    _event(order.id, attempt, source, "success", _detail(f"充值成功{extra}", attempt, result.message), remote_addr)


def _late(order: Order, attempt: RechargeAttempt, result: UpstreamResult | None, source: str,
          remote_addr: str | None) -> str:
    """A duplicate or late answer (the attempt or the order is already final): record it, change nothing.

    One exception: an attempt still open on an order support already closed (refunded by hand while unknown)
    takes the upstream's final word, so it stops being polled, and a late success is flagged for support.
    """
    status = result.status if result is not None else None
    if attempt.status in OPEN_STATUSES and status in (SUCCESS, FAILED):
        now = utcnow()
        move(attempt, "success" if status == SUCCESS else "failed", finished_at=now, updated_at=now, next_poll_at=None)
        # i18n-keep: data
        detail = ("订单已结束但上游回报充值成功，请人工核实 (upstream credited a closed order: check by hand)"
                  if status == SUCCESS else "订单已结束，上游回报失败")  # i18n-keep: data
        _event(order.id, attempt, source, status, detail, remote_addr)
    elif attempt.status in OPEN_STATUSES:
        attempt.next_poll_at = utcnow() + backoff(attempt.polls)
        # i18n-keep: data
        _event(order.id, attempt, source, status or "unknown", "订单已结束，上游仍未确认结果", remote_addr)
    else:
        # i18n-keep: data
        _event(order.id, attempt, source, status, f"重复或迟到的结果，已忽略 (duplicate or late: attempt already "
                                                  f"{attempt.status}, order {order.status})", remote_addr)
    db.session.commit()
    return "ignored"


def backoff(polls: int) -> timedelta:
    """5 s, 10 s, 20 s, 40 s ... at most 5 minutes between two questions to the supplier."""
    return timedelta(seconds=min(BACKOFF_FIRST * 2 ** min(polls, 16), BACKOFF_MAX))


def _alert_if_unknown_too_long(order: Order, attempt: RechargeAttempt, now: datetime) -> None:
    """Still unknown after RECHARGE_UNKNOWN_ALERT_MINUTES: keep polling, and ask support once (never refund)."""
    minutes = int(current_app.config.get("RECHARGE_UNKNOWN_ALERT_MINUTES", 30))
    if attempt.status != "unknown" or attempt.created_at > now - timedelta(minutes=minutes):
        return
    flagged = db.session.scalar(select(func.count()).select_from(RechargeEvent).where(
        RechargeEvent.attempt_id == attempt.id, RechargeEvent.source == "system", RechargeEvent.status == "unknown"))
    if not flagged:
        # i18n-keep: data
        _event(order.id, attempt, "system", "unknown",
               f"结果未知已超过 {minutes} 分钟，请联系供应商核实；系统继续查询，不会自动退款 (needs support)")


# --- failure and refund ------------------------------------------------------------------------------------

def fail_and_refund(order_id: int, reason: str) -> bool:
    """Fail a paid direct order with no open attempt and refund the buyer, in one transaction. Commits."""
    order = _lock_order(order_id)
    if order is None or order.status not in ACTIVE_ORDER_STATUSES:
        db.session.commit()
        return False
    if db.session.scalar(select(RechargeAttempt.id).where(RechargeAttempt.order_id == order.id,
                                                         RechargeAttempt.status.in_(OPEN_STATUSES)).limit(1)):
        db.session.rollback()
        raise InvalidTransition(gettext("上游仍在处理该订单，不能退款"))
    _fail_and_refund_locked(order, reason)
    db.session.commit()
    return True


def _fail_and_refund_locked(order: Order, reason: str) -> None:
    from app.payments import service as payments

    orders.transition(order.id, "failed", current=order.status)
    _set_upstream_status(order.id, "failed")
    refund = payments.refund_held_funds(order, reason)
    orders.transition(order.id, "refunded", current="failed")
    where = "钱包" if refund.destination == "wallet" else f"支付渠道 {refund.destination}"  # i18n-keep: data
    _event(order.id, None, "refund", "failed", f"{reason}；已退款至{where}")  # i18n-keep: data


# --- callbacks ---------------------------------------------------------------------------------------------

def handle_callback(supplier_id: int, headers: dict, body: bytes, remote_addr: str | None) -> str:
    """A supplier's callback: verified with that supplier's key and applied to its own attempt only. Returns the
    body the supplier expects. Duplicates and late callbacks answer the same and change nothing."""
    from app.suppliers.adapters import get_adapter

    supplier = supplier_or_none(supplier_id)
    if supplier is None or not supplier.protocol:
        raise SupplierNotFound("unknown supplier")
    try:
        callback = get_adapter(supplier).parse_callback(headers, body)
    except (InvalidCallback, KamengError) as exc:
        db.session.rollback()
        # i18n-keep: data
        _event(None, None, "callback", None, f"回调校验失败，已拒绝: {exc}", remote_addr, supplier_id=supplier.id)
        db.session.commit()
        raise CallbackRejected("invalid callback") from None
    attempt_id = db.session.scalar(
        select(RechargeAttempt.id).join(Order, Order.id == RechargeAttempt.order_id)
        .where(Order.order_no == callback.order_no[:32], RechargeAttempt.supplier_id == supplier.id))
    if attempt_id is None:  # a callback from supplier X never settles an attempt at Y
        # i18n-keep: data
        _event(None, None, "callback", callback.status,
               f"回调的订单 {callback.order_no[:40]} 未提交给该货源，已拒绝", remote_addr, supplier_id=supplier.id)
        db.session.commit()
        raise AttemptNotFound("no such order at this supplier")
    if callback.status not in (SUBMITTED, PROCESSING, SUCCESS, FAILED):
        attempt = db.session.get(RechargeAttempt, attempt_id)
        # i18n-keep: data
        _event(attempt.order_id, attempt, "callback", None, f"无法识别的回调状态 {callback.status[:32]!r}，已忽略",
               remote_addr)
        db.session.commit()
        return callback.answer
    result = UpstreamResult(callback.status, callback.trade_no, callback.message, tuple(callback.card_secrets))
    _apply(attempt_id, result, "callback", in_place=False, remote_addr=remote_addr)
    return callback.answer


# --- scheduled poll ----------------------------------------------------------------------------------------

def claim_due(now: datetime | None = None, limit: int = 100) -> list[int]:
    """Open attempts whose next poll is due, claimed for POLL_LEASE (a guarded UPDATE, so two concurrent polls
    never take the same one). Commits. The caller runs `poll(id)` for each (a job each with Redis)."""
    now = now or utcnow()
    ids = list(db.session.scalars(
        select(RechargeAttempt.id).where(RechargeAttempt.status.in_(OPEN_STATUSES),
                                         RechargeAttempt.next_poll_at <= now)
        .order_by(RechargeAttempt.next_poll_at).limit(limit)))
    claimed = []
    for attempt_id in ids:
        result = db.session.execute(
            update(RechargeAttempt).where(RechargeAttempt.id == attempt_id,
                                          RechargeAttempt.status.in_(OPEN_STATUSES),
                                          RechargeAttempt.next_poll_at <= now)
            .values(next_poll_at=now + POLL_LEASE))
        if result.rowcount == 1:
            claimed.append(attempt_id)
    db.session.commit()
    return claimed


# --- helpers -----------------------------------------------------------------------------------------------

def _lock_order(order_id: int) -> Order | None:
    return db.session.scalar(select(Order).where(Order.id == order_id).with_for_update()
                             .execution_options(populate_existing=True))


def _set_upstream_status(order_id: int, status: str) -> None:
    db.session.flush()
    db.session.execute(update(Order).where(Order.id == order_id).values(upstream_status=status))


def _ensure_supplier_account(supplier_id: int) -> None:
    code = ledger.supplier_account_code(supplier_id)
    if db.session.scalar(select(Account.id).where(Account.code == code)) is None:
        ledger.open_supplier_account(supplier_id)
        db.session.flush()


def _store_secrets(order: Order, secrets: tuple[str, ...] | list[str]) -> int:
    """Card secrets an upstream delivered (docking a card product), stored encrypted as sold to this order."""
    stored = 0
    now = utcnow()
    for secret in secrets or ():
        if not isinstance(secret, str) or not secret.strip():
            continue
        value = secret.strip()
        try:
            with db.session.begin_nested():
                db.session.add(CardSecret(product_id=order.product_id, secret_enc=crypto.encrypt(value),
                                          secret_hash=crypto.keyed_hash(order.product_id, value),
                                          masked=crypto.mask(value), status="sold", order_id=order.id,
                                          created_at=now, sold_at=now))
            stored += 1
        except IntegrityError:  # the upstream delivered a secret some order already has: never give it twice
            # i18n-keep: data
            _event(order.id, None, "system", None, f"上游返回了重复卡密 {crypto.mask(value)}，未保存，请人工处理")
    return stored


def _event(order_id: int | None, attempt: RechargeAttempt | None, source: str, status: str | None, detail: str,
           remote_addr: str | None = None, supplier_id: int | None = None) -> None:
    db.session.add(RechargeEvent(order_id=order_id, attempt_id=attempt.id if attempt else None,
                                 supplier_id=attempt.supplier_id if attempt else supplier_id, source=source,
                                 status=status, detail=detail[:255], remote_addr=(remote_addr or None) and
                                 remote_addr[:64], created_at=utcnow()))


def _detail(text: str, attempt: RechargeAttempt, message: str | None) -> str:
    parts = [text, f"第 {attempt.seq} 个货源"]  # i18n-keep: data
    if attempt.upstream_trade_no:
        parts.append(f"上游单号 {attempt.upstream_trade_no}")  # i18n-keep: data
    if message:
        parts.append(message)
    return "；".join(parts)[:255]

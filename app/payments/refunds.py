"""Refunds (退款): money back to an agent's wallet at once, or a channel payment paid back through its channel.

A channel refund is a state machine, driven by jobs; `transition()` is the one function that moves it:

    requested --(channel accepted, result later)--> processing --> succeeded
        |                                              |
        +--------------------> succeeded / failed <----+          failed --(staff retry)--> requested

- `request_channel_refund()` writes the refund (requested, with a new out_refund_no) and an outbox message in the
  caller's transaction; after commit the message runs `submit()` (inline without Redis, else on RQ).
- `submit()` asks the channel (refund, or refund query once the channel said it is processing) outside any
  transaction and books the answer under the refund's row lock. An answer that never came (timeout, 5xx, an
  unsigned reply: ChannelUnavailable) changes nothing but the next attempt time: the next call repeats the same
  out_refund_no, which the channel refunds once.
- `poll_due()` (scheduled, REFUND_POLL_SECONDS) submits what is due again, with backoff; refund notifications
  (WeChat Pay REFUND.*, UnionPay) are booked by `apply_notice()` through the same transition.
- The ledger follows the channel: the money stays in platform:buyer_funds until the channel says the refund
  succeeded; only then is `refund:<channel>:<trade_no>` (buyer_funds -> clearing) posted and the payment marked
  refunded. Failed and abnormal refunds, and refunds the channel keeps not answering, raise a PaymentAlert.
"""
from __future__ import annotations

import json
import logging
import secrets
from contextlib import contextmanager
from datetime import datetime, timedelta

from flask import current_app
from flask_babel import gettext, lazy_gettext
from sqlalchemy import select

from app import states
from app.audit import service as audit
from app.clock import utcnow
from app.errors import Conflict, KamengError, NotFound, ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.service import Line
from app.outbox import service as outbox
from app.payments import gateways
from app.payments.channels.base import ChannelUnavailable, RefundNotice, RefundRequest, RefundResult
from app.payments.models import PAYMENT_STATES, Payment, PaymentAlert, Refund, WalletTopUp
from app.states import Machine

log = logging.getLogger(__name__)

TRANSITIONS: dict[str, set[str]] = {
    "requested": {"processing", "succeeded", "failed"},
    "processing": {"succeeded", "failed"},
    "failed": {"requested", "succeeded"},  # staff: ask again, or confirm the channel paid it another way
    "succeeded": set(),
}
REFUND_STATES = Machine("refund", Refund, TRANSITIONS, initial=("requested", "succeeded"), title="refund")
ABNORMAL = "abnormal: "  # last_error prefix: the channel took the refund but could not pay the buyer
# last_error prefix: the channel has no refund call (an epay provider without api.php?act=refund): staff refund it
# in the provider's back office and confirm (confirm_paid); asking the channel again would change nothing.
MANUAL = "manual: "
# Channels that keep an abnormal refund (WeChat Pay: settled with its abnormal-refund handling): never asked again.
# Elsewhere an abnormal answer moved no money (Alipay: our balance there was too low) and may be asked again.
HOLDS_ABNORMAL = ("wechatpay", "unionpay")
OPEN_STATUSES = ("requested", "processing")
STATUS_TEXT = {
    "requested": lazy_gettext("已申请"),
    "processing": lazy_gettext("渠道处理中"),
    "succeeded": lazy_gettext("退款成功"),
    "failed": lazy_gettext("退款失败"),
}
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(minutes=30)
TOPIC = "refund_submit"


def new_refund_no() -> str:
    """'R' + yymmdd + 12 random digits: 19 letters and digits, valid at every channel (UnionPay's orderId too)."""
    return "R" + utcnow().strftime("%y%m%d") + f"{secrets.randbelow(10 ** 12):012d}"


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min ... at most 30 minutes between two calls to the channel about one refund."""
    return min(BACKOFF_FIRST * 2 ** max(min(attempts, 16) - 1, 0), BACKOFF_MAX)


# --- creating refunds (in the caller's transaction) ------------------------------------------------------------

def request_channel_refund(payment: Payment, reason: str, actor_id: int | None = None) -> Refund:
    """Ask for a channel payment to be paid back in full. Does not commit; the channel is asked after commit."""
    if payment.status != "paid":
        raise Conflict(gettext("该笔收款已退款或正在退款"))
    states.move(PAYMENT_STATES, payment.id, "paid", "refunding")
    refund = Refund(order_id=payment.order_id, payment_id=payment.id, amount=payment.amount,
                    destination=payment.channel, reason=reason[:255], status="requested",
                    out_refund_no=new_refund_no(), next_attempt_at=utcnow(), actor_id=actor_id, updated_at=utcnow())
    db.session.add(refund)
    db.session.flush()
    _schedule(refund)
    return refund


def record_wallet_refund(order_id: int, amount: int, reason: str, actor_id: int | None = None) -> Refund:
    """A refund to an agent's wallet: the caller posted its journal in this transaction, so it is done."""
    now = utcnow()
    refund = Refund(order_id=order_id, amount=amount, destination="wallet", reason=reason[:255], status="succeeded",
                    actor_id=actor_id, updated_at=now, finished_at=now)
    db.session.add(refund)
    return refund


def _schedule(refund: Refund) -> None:
    outbox.write(TOPIC, f"refund:{refund.out_refund_no}:submit", {"refund_id": refund.id})


@outbox.handler(TOPIC, job_id=lambda payload: f"refund-{payload['refund_id']}")
def _run_submit(message) -> None:
    submit(json.loads(message.payload)["refund_id"])
    outbox.finish(message, "done")  # the refund keeps its own schedule (poll_due) from here


# --- the state machine -------------------------------------------------------------------------------------

def transition(refund: Refund, to_status: str, *, message: str | None = None, channel_refund_no: str | None = None,
               meta: dict | None = None, next_attempt_at: datetime | None = None) -> bool:
    """Move a refund (locked by the caller) to `to_status`; the one place its status changes. A move the machine
    does not allow changes nothing and returns False (a late or repeated answer). Does not commit.

    succeeded posts the ledger's refund journal and marks the payment refunded; failed raises an alert."""
    if to_status not in TRANSITIONS.get(refund.status, set()):
        return False
    now = utcnow()
    try:
        states.move(REFUND_STATES, refund.id, refund.status, to_status, updated_at=now)
    except states.LostMove:
        return False
    db.session.refresh(refund)
    if channel_refund_no:
        refund.channel_refund_no = channel_refund_no[:64]
    if meta:
        refund.meta = json.dumps({**_meta(refund), **meta})
    if to_status == "failed":
        refund.last_error = (message or "渠道拒绝退款")[:255]  # i18n-keep: data
    if to_status == "succeeded":
        _book_success(refund)
        refund.finished_at, refund.next_attempt_at = now, None
    elif to_status == "failed":
        refund.finished_at, refund.next_attempt_at = now, None
        if is_manual(refund):
            # i18n-keep: data
            _alert("refund_manual", refund, f"渠道不支持接口退款，请在渠道商户后台人工退款后确认：{message or ''}")
        else:
            _alert("refund_abnormal" if is_abnormal(refund) else "refund_failed", refund,
                   f"退款失败，请人工处理：{message or ''}")  # i18n-keep: data
    elif to_status == "processing":
        refund.next_attempt_at = next_attempt_at or now + backoff(refund.attempts)
    elif to_status == "requested":  # staff retry after a failure: a new refund number, asked at once
        refund.out_refund_no, refund.finished_at, refund.next_attempt_at = new_refund_no(), None, now
        refund.channel_refund_no, refund.meta = None, None
        _schedule(refund)
    return True


def _book_success(refund: Refund) -> None:
    payment = db.session.get(Payment, refund.payment_id)
    ledger.post_journal(f"refund:{payment.channel}:{payment.trade_no}", "refund",
                        [Line(gateways.BUYER_FUNDS, -refund.amount),
                         Line(gateways.clearing_account(payment.channel), refund.amount)],
                        memo=f"{refund.out_refund_no} {refund.reason}"[:255], order_id=refund.order_id)
    states.move(PAYMENT_STATES, payment.id, payment.status, "refunded")


def _alert(kind: str, refund: Refund, message: str) -> None:
    db.session.add(PaymentAlert(kind=kind, channel=refund.destination, refund_id=refund.id,
                                order_no=_number_of(refund), message=message[:500]))
    log.warning("payment alert %s: refund %s: %s", kind, refund.out_refund_no, message)


def _meta(refund: Refund) -> dict:
    return json.loads(refund.meta) if refund.meta else {}


def _number_of(refund: Refund) -> str | None:
    """Our number the payment was made under: the order's, or the top-up's."""
    payment = db.session.get(Payment, refund.payment_id) if refund.payment_id else None
    if payment is not None and payment.topup_id:
        return db.session.scalar(select(WalletTopUp.topup_no).where(WalletTopUp.id == payment.topup_id))
    if refund.order_id:
        from app.orders.models import Order

        return db.session.scalar(select(Order.order_no).where(Order.id == refund.order_id))
    return None


# --- asking the channel ------------------------------------------------------------------------------------

def _locked(refund_id: int) -> Refund | None:
    return db.session.scalar(select(Refund).where(Refund.id == refund_id).with_for_update())


@contextmanager
def _changing(refund_id: int):
    """The refund under its row lock for one change: committed at the end, rolled back on any error."""
    try:
        refund = _locked(refund_id)
        if refund is None:
            raise NotFound(gettext("退款不存在"))
        yield refund
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise


def submit(refund_id: int, now: datetime | None = None) -> str | None:
    """Ask the channel about one open refund that is due (refund, or refund query once processing) and book the
    answer. Returns the status left, None when there was nothing to do."""
    now = now or utcnow()
    try:
        refund = _locked(refund_id)
        if refund is None or refund.status not in OPEN_STATUSES or refund.destination == "wallet" \
                or (refund.next_attempt_at and refund.next_attempt_at > now):
            db.session.rollback()
            return None
        asking = refund.status
        refund.attempts += 1
        # Claimed for a while (from the real now, not the batch's): another poller skips it until then; a crash
        # leaves it due again at that time.
        refund.next_attempt_at = utcnow() + backoff(refund.attempts)
        request = _request(refund)
        channel = refund.destination
        try:
            gateway = gateways.get_channel(channel)
        except KamengError:  # the channel is gone (unknown, or the sandbox in production): a definite refusal
            gateway = None
        fixed = getattr(gateway, "refund_identifiers", None)
        if asking == "requested" and fixed is not None:  # saved before the call: a crash cannot change them
            refund.meta = json.dumps({**_meta(refund), **fixed(request)})
            request = _request(refund)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    try:
        if gateway is None:
            raise KamengError(gettext("支付渠道 %(channel)s 不可用", channel=channel))
        result = gateway.refund(request) if asking == "requested" else gateway.query_refund(request)
    except ChannelUnavailable as exc:  # identifiers the retry must repeat (UnionPay's txnTime) come with it
        return _unknown(refund_id, exc.message, getattr(exc, "meta", None))
    except KamengError as exc:
        if asking == "processing":  # the channel took it: an error asking about it is not a refusal
            return _unknown(refund_id, exc.message)
        result = RefundResult("failed", message=exc.message)  # refused before any money moved
    return book(refund_id, result)


def _request(refund: Refund) -> RefundRequest:
    from app.payments.models import ChannelOrder

    payment = db.session.get(Payment, refund.payment_id)
    number = _number_of(refund) or ""
    order_meta = db.session.scalar(select(ChannelOrder.meta).where(ChannelOrder.channel == payment.channel,
                                                                   ChannelOrder.out_trade_no == number))
    meta = {**(json.loads(order_meta) if order_meta else {}), **_meta(refund)}
    base = (current_app.config.get("PUBLIC_BASE_URL") or "http://127.0.0.1").rstrip("/")
    return RefundRequest(out_trade_no=number, trade_no=payment.trade_no, out_refund_no=refund.out_refund_no,
                         amount=refund.amount, total=payment.amount, reason=refund.reason,
                         notify_url=f"{base}/pay/refund-notify/{payment.channel}", meta=meta)


def book(refund_id: int, result: RefundResult) -> str:
    """Book a channel's answer about a refund under its row lock; commits. Returns the status left."""
    with _changing(refund_id) as refund:
        if result.status == "succeeded":
            transition(refund, "succeeded", channel_refund_no=result.channel_refund_no, meta=result.meta)
        elif result.status == "processing":
            if refund.status == "processing":
                if result.channel_refund_no:
                    refund.channel_refund_no = result.channel_refund_no[:64]
                if result.meta:
                    refund.meta = json.dumps({**_meta(refund), **result.meta})
            else:
                transition(refund, "processing", channel_refund_no=result.channel_refund_no, meta=result.meta,
                           next_attempt_at=utcnow() + BACKOFF_FIRST)
            _alert_if_stuck(refund)
        elif result.status == "abnormal":
            transition(refund, "failed", message=f"{ABNORMAL}{result.message or '渠道退款异常'}",  # i18n-keep: data
                       channel_refund_no=result.channel_refund_no)
        elif result.status == "manual":
            transition(refund, "failed", message=f"{MANUAL}{result.message or '渠道不支持接口退款'}")  # i18n-keep: data
        else:
            transition(refund, "failed", message=result.message or "渠道拒绝退款",  # i18n-keep: data
                       channel_refund_no=result.channel_refund_no)
        status = refund.status
    return status


def _unknown(refund_id: int, message: str, meta: dict | None = None) -> str:
    """No answer from the channel: nothing moves; the next attempt (already scheduled) asks again, repeating the
    identifiers this one used."""
    with _changing(refund_id) as refund:
        refund.last_error = f"渠道无应答，稍后重试 (no answer: {message})"[:255]  # i18n-keep: data
        if meta:
            refund.meta = json.dumps({**_meta(refund), **meta})
        _alert_if_stuck(refund)
        status = refund.status
    return status


def _alert_if_stuck(refund: Refund) -> None:
    threshold = int(current_app.config.get("REFUND_ALERT_ATTEMPTS", 6))
    if refund.attempts != threshold:
        return
    # i18n-keep: data
    _alert("refund_stuck", refund, f"渠道 {refund.attempts} 次未给出退款结果，系统继续查询 ({refund.last_error or ''})")


def apply_notice(channel: str, notice: RefundNotice) -> str:
    """A verified refund notification: book it like a query's answer. Returns the outcome for the log."""
    refund = db.session.scalar(select(Refund).where(Refund.out_refund_no == notice.out_refund_no,
                                                    Refund.destination == channel))
    if refund is None:
        db.session.rollback()
        return "unknown_refund"
    if notice.amount is not None and notice.amount != refund.amount:
        db.session.rollback()
        return "amount_mismatch"
    before = refund.status
    db.session.rollback()
    after = book(refund.id, RefundResult(notice.status, notice.channel_refund_no, meta={}))
    return "accepted" if after != before else "duplicate"


def poll_due(now: datetime | None = None, limit: int = 200) -> dict:
    """Scheduled: ask the channels about every open refund that is due (oldest first)."""
    now = now or utcnow()
    ids = list(db.session.scalars(select(Refund.id).where(Refund.status.in_(OPEN_STATUSES),
                                                          Refund.next_attempt_at <= now)
                                  .order_by(Refund.next_attempt_at, Refund.id).limit(limit)))
    db.session.rollback()
    report = {"due": len(ids), "succeeded": 0, "processing": 0, "failed": 0, "requested": 0}
    for refund_id in ids:
        try:
            status = submit(refund_id, now)
        except Exception:  # one refund's trouble never stops the others; it is due again later
            db.session.rollback()
            log.exception("refund %s could not be asked about", refund_id)
            report["errors"] = report.get("errors", 0) + 1
            continue
        if status:
            report[status] = report.get(status, 0) + 1
    return report


def is_abnormal(refund: Refund) -> bool:
    return (refund.last_error or "").startswith(ABNORMAL) and refund.destination in HOLDS_ABNORMAL


def is_manual(refund: Refund) -> bool:
    """A refund the channel cannot make (no refund call): it waits for staff to refund by hand and confirm."""
    return (refund.last_error or "").startswith(MANUAL)


def _failed(refund: Refund, what: str) -> None:
    """what: retry or confirm."""
    if refund.status != "failed":
        status = STATUS_TEXT.get(refund.status, refund.status)
        raise Conflict(gettext("退款状态为「%(status)s」，不能重试", status=status) if what == "retry"
                       else gettext("退款状态为「%(status)s」，不能确认", status=status))


def retry(refund_id: int, actor_id: int | None) -> Refund:
    """Staff ask again for a refund the channel refused (a new refund number); audited. Commits. An abnormal
    refund is not asked again (the channel already holds it): it is settled in the channel's merchant platform
    and then confirmed with `confirm_paid`."""
    with _changing(refund_id) as refund:
        _failed(refund, "retry")
        if is_abnormal(refund):
            raise Conflict(gettext("渠道退款异常：请在渠道商户平台处理（异常退款）后「确认已退款」"))
        if is_manual(refund) and not _channel_refunds_now(refund):
            raise Conflict(gettext("该渠道不支持接口退款：请在渠道商户后台人工退款后「确认已退款」"))
        audit.record("refund.retry", "refund", refund.id, {"status": "failed", "last_error": refund.last_error},
                     {"status": "requested"}, actor_id=actor_id)
        transition(refund, "requested")
    return refund


def _channel_refunds_now(refund: Refund) -> bool:
    """Whether the refund's channel has a refund call now (an admin may have turned epay's refund API on since)."""
    try:
        gateway = gateways.get_channel(refund.destination)
    except KamengError:
        return False
    return bool(getattr(gateway, "refund_api", True))


def confirm_paid(refund_id: int, actor_id: int | None, note: str) -> Refund:
    """Staff confirm that the channel paid a failed refund back another way (WeChat Pay's abnormal-refund handling
    in the merchant platform): the ledger then books it. Audited, with the note. Commits."""
    note = (note or "").strip()
    if not note:
        raise ValidationError(gettext("请填写说明（渠道处理单号等）"))
    with _changing(refund_id) as refund:
        _failed(refund, "confirm")
        audit.record("refund.confirm", "refund", refund.id, {"status": "failed", "last_error": refund.last_error},
                     {"status": "succeeded"}, reason=note[:255], actor_id=actor_id)
        transition(refund, "succeeded")
    return refund

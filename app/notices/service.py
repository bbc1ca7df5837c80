"""Delivery notices: a storefront buyer's optional e-mail (the order, its card secrets, the lookup link) and SMS (the
order number and the lookup link, never a secret).

- `register()` (checkout, in the order's transaction) writes one `waiting` row per notice the buyer gets: an
  e-mail when the buyer gave an address, an SMS when the SMS provider is on and the contact is a mainland mobile.
- `queue_for_delivery()` (orders.transition, in the transaction that delivers the order) turns those rows `queued`
  and writes one outbox message each: nothing leaves for an order that is rolled back, unpaid, or held by risk
  control (a held order is `reviewing`, not delivered; approved, it is delivered by the normal path and queued).
- `send()` is the job (outbox topic `delivery_notice`, RQ job id `notice-<id>-<round>`): it claims the row with a
  guarded update (a second run of the same job finds nothing to do), sends through SMTP (app.notices.mailer) or
  the SMS provider (app.notices.sms), and books the outcome. A temporary failure is retried after
  NOTICE_RETRY_SECONDS (the outbox sweeper dispatches it again); after the last one, or at once on a permanent
  refusal, the row is `failed` and on support's list (发货通知), where `resend()` queues it again (audited).

No card secret is ever written to a log, the outbox, a job's arguments or an error column: the job takes the
notice's id and reads the secrets itself, and errors are scrubbed of the recipient and the secrets.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from flask_babel import gettext as _
from sqlalchemy import bindparam, select

from app import states
from app.audit import service as audit
from app.clock import utcnow
from app.crypto import mask
from app.errors import Conflict, NotFound
from app.extensions import db
from app.notices.addresses import mobile_number
from app.notices.errors import DeliveryError
from app.notices.models import NOTICE_STATES, DeliveryNotice
from app.outbox import service as outbox

log = logging.getLogger(__name__)
TOPIC = "delivery_notice"
# A job that took a notice and has not finished after this long is taken to have died: the notice is taken again
# (an e-mail may then leave twice, which beats never).
STALE_CLAIM = timedelta(minutes=10)
# --- checkout and delivery (in the callers' transactions) ------------------------------------------------------

def register(order_id: int, email: str | None, contact: str | None, locale: str, link_base: str) -> None:
    """The notices a storefront order's buyer gets once it is delivered; in the checkout's transaction."""
    from app.notices import sms

    locale = "en" if str(locale or "").lower().startswith("en") else "zh"
    if email:
        db.session.add(DeliveryNotice(order_id=order_id, kind="email", recipient=email, locale=locale,
                                      link_base=link_base[:255], status="waiting"))
    phone = mobile_number(contact)
    if phone and sms.enabled():
        db.session.add(DeliveryNotice(order_id=order_id, kind="sms", recipient=phone, locale=locale,
                                      link_base=link_base[:255], status="waiting"))


def queue_for_delivery(order_id: int) -> None:
    """The order is being delivered (the caller's transaction): its waiting notices leave after the commit."""
    now = utcnow()
    rows = states.move_all(NOTICE_STATES, "waiting", "queued", _NOTICES_OF_ORDER, shape="notices_of_order",
                           params={"notice_order": order_id}, returning=("id",), next_attempt_at=now, updated_at=now)
    for (notice_id,) in rows:
        _schedule(notice_id, 0)


# Every storefront delivery asks (a built statement: states.move_all's shape)
_NOTICES_OF_ORDER = DeliveryNotice.__table__.c.order_id == bindparam("notice_order")


def _schedule(notice_id: int, round_no: int) -> None:
    outbox.write(TOPIC, f"notice:{notice_id}:send:{round_no}", {"notice_id": notice_id, "round": round_no})


# --- the job ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    status: str  # sent, retry (this notice failed; again after delay), failed, busy (not due, or another job
    #              holds it: ask again after delay), skipped (nothing left to do: sent, failed, waiting, gone)
    delay: timedelta | None = None
    error: str | None = None


@outbox.handler(TOPIC, job_id=lambda payload: f"notice-{payload['notice_id']}-{payload.get('round', 0)}")
def _run(message) -> None:
    outcome = send(json.loads(message.payload)["notice_id"])
    outbox.settle(message, outcome.status, outcome.delay, outcome.error)


def retry_delays() -> list[timedelta]:
    return outbox.retry_schedule("NOTICE_RETRY_SECONDS")


def send(notice_id: int) -> Outcome:
    """Send one queued notice that is due and book the outcome; commits. Safe to run twice (the claim)."""
    now = utcnow()
    table = DeliveryNotice.__table__
    claim = {"claimed_at": now, "attempts": table.c.attempts + 1, "updated_at": now}
    claimed = (states.move_all(NOTICE_STATES, "queued", "sending", table.c.id == notice_id,
                               table.c.next_attempt_at <= now, **claim)
               or states.move_all(NOTICE_STATES, "sending", "sending", table.c.id == notice_id,
                                  table.c.claimed_at < now - STALE_CLAIM, **claim))
    db.session.commit()
    if not claimed:
        return _not_claimed(notice_id, now)
    notice = db.session.get(DeliveryNotice, notice_id)
    order = notice.order
    secrets: list[str] = []
    try:
        if order.status != "delivered":  # refunded or disputed since: its secrets are not sent any more
            raise DeliveryError(_("订单状态为「%(status)s」，未发送", status=order.status_display()),
                                temporary=False)
        if notice.kind == "email":
            from app.catalog import cards
            from app.notices import mailer

            secrets = cards.reveal(order.id) if order.product.kind == "card" else []
            # A reusable secret's use is marked revealed before it leaves (a refund gives back only unseen uses).
            db.session.commit()
            mailer.send(mailer.compose(order, notice.recipient, secrets, notice.locale, lookup_url(notice, order)))
        else:
            from app.notices import sms

            sms.send(notice.recipient, order.order_no)
    except DeliveryError as exc:
        return _failed(notice, _scrub(exc.message, notice.recipient, secrets), exc.temporary)
    except Exception as exc:  # noqa: BLE001 - a bug or a bad row must not leave the notice claimed for ever
        db.session.rollback()
        notice = db.session.get(DeliveryNotice, notice_id)
        error = f"{type(exc).__name__}: {str(exc)[:120]}"  # no traceback: its frames could show the message
        return _failed(notice, _scrub(error, notice.recipient, secrets), temporary=True)
    move(notice, "sent", sent_at=utcnow(), last_error=None, updated_at=utcnow())
    notice.next_attempt_at = None
    db.session.commit()
    log.info("delivery notice %s (%s to %s) for order %s sent", notice.id, notice.kind, notice.recipient_masked,
             order.order_no)
    return Outcome("sent")


def move(notice: DeliveryNotice, new: str, **values: object) -> None:
    """The one place a notice's status changes (NOTICE_STATES), guarded on the status the caller holds. Does not
    commit."""
    states.move(NOTICE_STATES, notice.id, notice.status, new, **values)


def _not_claimed(notice_id: int, now) -> Outcome:
    """Why a run found nothing to take: a retry not yet due or a job holding the notice (this message waits and
    asks again: a job that died is replaced after STALE_CLAIM), or nothing left to do."""
    row = db.session.execute(select(DeliveryNotice.status, DeliveryNotice.next_attempt_at, DeliveryNotice.claimed_at)
                             .where(DeliveryNotice.id == notice_id)).first()
    db.session.rollback()
    if row is not None and row.status == "queued" and row.next_attempt_at is not None:
        return Outcome("busy", max(row.next_attempt_at - now, timedelta(0)), "not due yet")
    if row is not None and row.status == "sending" and row.claimed_at is not None:
        return Outcome("busy", max(row.claimed_at + STALE_CLAIM - now, timedelta(0)), "another job is sending it")
    return Outcome("skipped")


def _failed(notice: DeliveryNotice, error: str, temporary: bool) -> Outcome:
    delays = retry_delays()
    notice.last_error, notice.updated_at = error[:255], utcnow()
    if temporary and notice.attempts <= len(delays):
        delay = delays[notice.attempts - 1]
        move(notice, "queued", next_attempt_at=utcnow() + delay)
        db.session.commit()
        log.warning("delivery notice %s (%s to %s): attempt %s failed, retrying in %ss: %s", notice.id, notice.kind,
                    notice.recipient_masked, notice.attempts, int(delay.total_seconds()), error)
        return Outcome("retry", delay, error)
    move(notice, "failed", next_attempt_at=None)
    db.session.commit()
    log.warning("delivery notice %s (%s to %s) failed after %s attempt(s): %s", notice.id, notice.kind,
                notice.recipient_masked, notice.attempts, error)
    return Outcome("failed", error=error)


def _scrub(text: str, recipient: str, secrets: list[str]) -> str:
    """An error as stored and logged: the recipient masked, no card secret (a server may echo what it was sent)."""
    for value in sorted([recipient, *secrets], key=len, reverse=True):
        if value:
            text = text.replace(value, mask(value))
    return text


def lookup_url(notice: DeliveryNotice, order) -> str:
    """The storefront's lookup page for the order (the order password still needed): never the signed link."""
    from urllib.parse import quote

    base = (current_app.config.get("PUBLIC_BASE_URL") or notice.link_base or "").rstrip("/")
    return f"{base}/shop/lookup?order_no={quote(order.order_no, safe='')}"


# --- support ---------------------------------------------------------------------------------------------------

def resend(notice_id: int, actor_id: int | None) -> DeliveryNotice:
    """Support sends a notice again (failed, or sent and not received): queued now, audited. The order must still
    be delivered (a refunded order's secrets are void). Commits."""
    notice = db.session.scalar(select(DeliveryNotice).where(DeliveryNotice.id == notice_id).with_for_update())
    if notice is None:
        db.session.rollback()
        raise NotFound(_("通知不存在"))
    if notice.status not in ("failed", "sent"):
        db.session.rollback()
        raise Conflict(_("该通知正在发送或等待发货，无需重发"))
    if notice.order.status != "delivered":
        db.session.rollback()
        raise Conflict(_("订单状态为「%(status)s」，不能重发", status=notice.order.status_display()))
    before = {"status": notice.status, "attempts": notice.attempts, "last_error": notice.last_error}
    notice.resends += 1
    move(notice, "queued", attempts=0, next_attempt_at=utcnow())
    notice.claimed_at, notice.updated_at = None, utcnow()
    audit.record("notice.resend", "delivery_notice", notice.id, before,
                 {"status": "queued", "kind": notice.kind, "to": notice.recipient_masked,
                  "order_no": notice.order.order_no}, actor_id=actor_id)
    _schedule(notice.id, notice.resends)
    db.session.commit()
    return notice

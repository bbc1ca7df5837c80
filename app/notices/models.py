"""Delivery notices: the buyer's optional e-mail (the order, its card secrets and the lookup link) and SMS (the
order number and the lookup link, never a secret), one row per order and kind, sent by a job once the order is
delivered; the rows that could not be sent are support's failed list."""
from __future__ import annotations

from flask_babel import lazy_gettext
from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, event
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.crypto import EncryptedText, mask, pii_hash
from app.extensions import db
from app.states import Machine

KINDS = {"email": lazy_gettext("邮件"), "sms": lazy_gettext("短信")}
# waiting: the order is not delivered yet (unpaid, or held by risk control); queued: handed to the job (first try or
# a retry due at next_attempt_at); sending: a job holds it right now; sent; failed: given up, on support's list.
STATUSES = {"waiting": lazy_gettext("待发货"), "queued": lazy_gettext("待发送"), "sending": lazy_gettext("发送中"),
            "sent": lazy_gettext("已发送"), "failed": lazy_gettext("发送失败")}


class DeliveryNotice(db.Model):
    __tablename__ = "delivery_notice"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False)
    kind = Column(String(8), nullable=False)  # email, sms
    # The buyer's address or phone: personal data, encrypted at rest, with its blind index (support finds the rows
    # of an address by it) and the masked form screens show.
    recipient = Column(EncryptedText, nullable=False)
    recipient_hash = Column(String(64), nullable=False)
    recipient_masked = Column(String(64), nullable=False)
    locale = Column(String(8), nullable=False, default="zh")  # the storefront's language at checkout: zh or en
    link_base = Column(String(255))  # the storefront's address at checkout (PUBLIC_BASE_URL wins when set)
    status = Column(String(16), nullable=False, default="waiting")
    attempts = Column(Integer, nullable=False, default=0)
    resends = Column(Integer, nullable=False, default=0)  # staff resends (each audited)
    last_error = Column(String(255))  # what the server or provider answered; never the message or a secret
    next_attempt_at = Column(DateTime)
    claimed_at = Column(DateTime)  # when a job took it (a job that died leaves it to be taken again later)
    sent_at = Column(DateTime)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    order = relationship("Order")

    __table_args__ = (
        UniqueConstraint("order_id", "kind", name="uq_delivery_notice_order_kind"),
        Index("ix_delivery_notice_status_next", "status", "next_attempt_at"),
        Index("ix_delivery_notice_recipient_hash", "recipient_hash"),
    )

    def __repr__(self) -> str:
        return f"{self.kind}:{self.recipient_masked}"


NOTICE_STATES = Machine("delivery_notice", DeliveryNotice, {
    "waiting": {"queued"},  # the order is delivered: it leaves after that commit
    "queued": {"sending"},
    # sending -> sending: a claim older than STALE_CLAIM (its job died) is taken over
    "sending": {"sent", "queued", "failed", "sending"},
    "sent": {"queued"},  # staff send it again
    "failed": {"queued"},
}, initial=("waiting",), title="delivery notice (e-mail / SMS)")


@event.listens_for(DeliveryNotice.recipient, "set")
def _recipient_index(target: DeliveryNotice, value, _old, _initiator) -> None:
    target.recipient_hash = pii_hash(value) or ""
    target.recipient_masked = mask(value)[:64]

"""Alerts (告警): the channels operators are told through, the rules that decide what is worth telling, each alert
with its state (open → resolved) and every delivery of it to a channel.

An alert is identified by its `key` (e.g. `low_stock:12`, `supplier_balance:3`): while an alert of that key is open,
raising it again only updates it (de-duplicated); resolving it sends one recovery message; raising the key after that
opens a new alert (the log keeps both). `open_key` holds the key only while the alert is open, under a unique
constraint: two evaluations at once can never open the same alert twice.
"""
from __future__ import annotations

from flask_babel import lazy_gettext
from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db
from app.states import Machine

CHANNEL_KINDS = {"dingtalk": lazy_gettext("钉钉群机器人"), "wecom": lazy_gettext("企业微信群机器人"),
                 "feishu": lazy_gettext("飞书群机器人"), "email": lazy_gettext("邮件")}
SEVERITIES = {"info": lazy_gettext("提示"), "warning": lazy_gettext("警告"), "critical": lazy_gettext("严重")}
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
ALERT_STATUSES = {"open": lazy_gettext("告警中"), "resolved": lazy_gettext("已恢复")}
EVENTS = {"raised": lazy_gettext("告警"), "resolved": lazy_gettext("恢复")}
# queued: waiting for its turn (first try, a retry, or the channel's rate limit); sending: a job holds it now;
# sent; failed: given up after the last retry, or refused for good (a wrong key, a robot that does not exist).
DELIVERY_STATUSES = {"queued": lazy_gettext("待发送"), "sending": lazy_gettext("发送中"),
                     "sent": lazy_gettext("已发送"), "failed": lazy_gettext("发送失败")}


class AlertChannel(db.Model):
    """Where alerts are sent: a DingTalk, WeCom or Feishu group robot (its webhook address, and the signing secret of
    DingTalk and Feishu robots), or e-mail to staff addresses over the platform's SMTP server (app/notices/mailer.py).

    The webhook address carries the robot's token (anyone holding it can post to the group), so it is a secret like
    the signing secret: both are stored encrypted (app.crypto) and shown only masked. Staff addresses are personal
    data: encrypted, shown masked."""
    __tablename__ = "alert_channel"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), nullable=False, unique=True)
    kind = Column(String(16), nullable=False)  # dingtalk, wecom, feishu, email
    enabled = Column(Boolean, nullable=False, default=True)
    webhook_enc = Column(Text)  # encrypted webhook URL (robots)
    webhook_masked = Column(String(96))
    secret_enc = Column(Text)  # encrypted signing secret (DingTalk 加签, Feishu 签名校验); none = unsigned
    recipients_enc = Column(Text)  # encrypted, comma-separated e-mail addresses (email)
    recipients_masked = Column(String(255))
    min_severity = Column(String(16), nullable=False, default="warning")  # only alerts at least this severe
    locale = Column(String(8), nullable=False, default="zh")  # the messages' language: zh or en
    last_sent_at = Column(DateTime)
    last_error = Column(String(255))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    def __repr__(self) -> str:
        return self.name

    def secret_state(self) -> str:
        from flask_babel import gettext

        return gettext("已设置") if self.secret_enc else gettext("未设置")


class AlertRule(db.Model):
    """One rule per kind (ALERT_RULES in app/alerts/rules.py): on or off, how severe, and its thresholds."""
    __tablename__ = "alert_rule"
    id = Column(Integer, primary_key=True)
    kind = Column(String(32), nullable=False, unique=True)
    enabled = Column(Boolean, nullable=False, default=True)
    severity = Column(String(16), nullable=False, default="warning")
    threshold = Column(Integer)  # the kind's count or minutes (see the rule's description); NULL = its default
    window_minutes = Column(Integer)  # the look-back window of counting rules; NULL = its default
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    def __repr__(self) -> str:
        return self.kind


class Alert(db.Model):
    __tablename__ = "alert"
    id = Column(Integer, primary_key=True)
    key = Column(String(128), nullable=False, index=True)
    open_key = Column(String(128), unique=True)  # = key while open, NULL once resolved (one open alert per key)
    rule = Column(String(32), nullable=False, index=True)
    severity = Column(String(16), nullable=False)
    status = Column(String(16), nullable=False, default="open")
    # What the message says, as facts (JSON: names, counts, amounts in fen, order numbers); the text is composed
    # from them in each channel's language. Never a secret or personal data (see app/alerts/rules.py).
    facts = Column(Text, nullable=False, default="{}")
    summary = Column(String(255), nullable=False)  # the zh_CN one-line text, for the log and searches
    occurrences = Column(Integer, nullable=False, default=1)  # evaluations that found it while open
    opened_at = Column(DateTime, nullable=False, default=utcnow)
    last_seen_at = Column(DateTime, nullable=False, default=utcnow)
    resolved_at = Column(DateTime)

    deliveries = relationship("AlertDelivery", back_populates="alert", order_by="AlertDelivery.id")

    __table_args__ = (Index("ix_alert_status_opened", "status", "opened_at"),)

    def __repr__(self) -> str:
        return f"#{self.id} {self.summary}"

    def text(self) -> str:
        """What is wrong, in the viewer's language (the log's 内容 column)."""
        import json

        from app.alerts.messages import headline

        return headline(self.rule, json.loads(self.facts or "{}"))


class AlertDelivery(db.Model):
    """One message (the alert, or its recovery) to one channel, sent by a job with retries."""
    __tablename__ = "alert_delivery"
    id = Column(Integer, primary_key=True)
    alert_id = Column(Integer, ForeignKey("alert.id"), nullable=False)
    channel_id = Column(Integer, ForeignKey("alert_channel.id"), nullable=False)
    event = Column(String(16), nullable=False)  # raised, resolved
    status = Column(String(16), nullable=False, default="queued")
    attempts = Column(Integer, nullable=False, default=0)
    last_error = Column(String(255))  # the robot's or server's answer; never the webhook, a secret or an address
    next_attempt_at = Column(DateTime)
    attempted_at = Column(DateTime)  # the last request to the channel (the channel's rate limit counts these)
    claimed_at = Column(DateTime)
    sent_at = Column(DateTime)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    alert = relationship("Alert", back_populates="deliveries")
    channel = relationship("AlertChannel")

    __table_args__ = (
        UniqueConstraint("alert_id", "channel_id", "event", name="uq_alert_delivery_alert_channel_event"),
        Index("ix_alert_delivery_channel_attempted", "channel_id", "attempted_at"),
        Index("ix_alert_delivery_status_next", "status", "next_attempt_at"),
    )


ALERT_STATES = Machine("alert", Alert, {"open": {"resolved"}, "resolved": set()}, initial=("open",), title="alert")
ALERT_DELIVERY_STATES = Machine("alert_delivery", AlertDelivery, {
    "queued": {"sending"},
    # sending -> sending: a claim older than STALE_CLAIM (its job died) is taken over
    "sending": {"sent", "queued", "failed", "sending"},
    "sent": set(),
    "failed": {"queued"},  # staff send it again
}, initial=("queued",), title="alert delivery")

"""Alerts: raise and resolve (idempotent, one open alert per key), evaluate the rules, and send each message to each
channel from a job, with retries and the channels' rate limits.

- `raise_alert(key, ...)` in the caller's transaction: a key already open is updated (last seen, how often, the
  latest facts) and nobody is told again; a new one is opened (the unique `open_key` settles two evaluations at
  once) and one delivery per enabled channel that takes its severity is written with an outbox message.
- `resolve(key)`: the open alert becomes resolved and every channel that was told of it gets a recovery message.
- `evaluate()` is the periodic job (`alerts-evaluate`, ALERT_EVALUATE_SECONDS): each enabled rule reads what is
  wrong now (app/alerts/rules.py), raises what it finds and resolves the alerts of its kind it no longer finds;
  a disabled rule resolves its open alerts. One transaction per rule; a rule that fails is reported and skipped.
- `send(delivery_id)` is the job behind the outbox message (RQ job id `alert-<delivery>-<round>`): it waits its
  turn under the channel's rate limit (counted from the deliveries' request times, under the channel's row lock),
  claims the delivery with a guarded update, sends (app/alerts/robots.py; e-mail through app/notices/mailer.py), and
  books the outcome; a temporary failure is retried after ALERT_RETRY_SECONDS, a robot's "too fast" after the time
  it asks for, a refusal for good (unknown robot, wrong secret) fails at once.

Nothing is sent in a web request: messages leave after the commit through the outbox (RQ, or inline at the end of
the job when there is no Redis). No webhook, secret or address is written to a log, the outbox or an error column.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import crypto, states
from app.alerts import messages, robots
from app.alerts.models import (
    ALERT_DELIVERY_STATES,
    ALERT_STATES,
    CHANNEL_KINDS,
    SEVERITIES,
    SEVERITY_RANK,
    Alert,
    AlertChannel,
    AlertDelivery,
    AlertRule,
)
from app.alerts.rules import RULES, RuleConfig, facts_json
from app.audit import service as audit
from app.clock import utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.outbox import service as outbox

log = logging.getLogger(__name__)
TOPIC = "alert_delivery"
STALE_CLAIM = timedelta(minutes=5)  # a job holding a delivery longer than this has died: taken again
_URL = re.compile(r"https?://\S+")


# --- rules -------------------------------------------------------------------------------------------------------

def ensure_rules() -> dict[str, AlertRule]:
    """Every rule's row (a missing one is created with its defaults: enabled, the kind's severity)."""
    rows = {r.kind: r for r in db.session.scalars(select(AlertRule))}
    for kind, spec in RULES.items():
        if kind not in rows:
            try:
                with db.session.begin_nested():
                    row = AlertRule(kind=kind, enabled=True, severity=spec.severity, updated_at=utcnow())
                    db.session.add(row)
                rows[kind] = row
            except IntegrityError:  # another process created it meanwhile
                rows[kind] = db.session.scalar(select(AlertRule).where(AlertRule.kind == kind))
    return rows


def rule_config(row: AlertRule) -> RuleConfig:
    spec = RULES[row.kind]
    return RuleConfig(kind=row.kind, severity=row.severity, threshold=row.threshold or spec.threshold(),
                      window_minutes=row.window_minutes or spec.window)


def check_rule(row: AlertRule) -> None:
    """What the rule form may set: a known severity, positive numbers."""
    if row.severity not in SEVERITIES:
        raise ValidationError(_("级别须为提示、警告或严重"))
    for value in (row.threshold, row.window_minutes):
        if value is not None and not 1 <= value <= 100_000:
            raise ValidationError(_("阈值和时间窗口须为 1 到 100000 的整数，或留空使用默认值"))


# --- raise and resolve -------------------------------------------------------------------------------------------

def _open_alert(key: str) -> Alert | None:
    return db.session.scalars(select(Alert).where(Alert.open_key == key).with_for_update()
                              .execution_options(populate_existing=True)).first()


def raise_alert(key: str, rule: str, severity: str, facts: dict, now: datetime | None = None) -> tuple[Alert, bool]:
    """Open the alert of `key`, or update the one open (no new message). Returns (alert, opened now). In the caller's
    transaction; the messages leave after its commit."""
    now = now or utcnow()
    if len(key) > 128 or severity not in SEVERITIES:
        raise ValidationError(f"bad alert key or severity: {key!r} {severity!r}")
    alert = _open_alert(key)
    opened = False
    if alert is None:
        try:
            with db.session.begin_nested():
                alert = Alert(key=key, open_key=key, rule=rule, severity=severity, status="open",
                              facts=facts_json(facts), summary=messages.summary(rule, facts), occurrences=1,
                              opened_at=now, last_seen_at=now)
                db.session.add(alert)
            opened = True
        except IntegrityError:  # opened by another evaluation between our read and insert: that one stands
            alert = _open_alert(key)
            if alert is None:
                raise
    if opened:
        for channel in _channels_for(severity):
            _deliver(alert, channel, "raised", now)
        log.info("alert %s opened: %s", key, alert.summary)
    else:
        alert.occurrences += 1
        alert.last_seen_at = now
        alert.facts, alert.summary = facts_json(facts), messages.summary(rule, facts)
    return alert, opened


def resolve(key: str, now: datetime | None = None) -> Alert | None:
    """Resolve the open alert of `key` (None when none is open) and tell every channel that was told of it. In the
    caller's transaction."""
    now = now or utcnow()
    alert = _open_alert(key)
    if alert is None:
        return None
    states.move(ALERT_STATES, alert.id, alert.status, "resolved", open_key=None, resolved_at=now)
    told = db.session.scalars(select(AlertChannel).join(AlertDelivery, AlertDelivery.channel_id == AlertChannel.id)
                              .where(AlertDelivery.alert_id == alert.id, AlertDelivery.event == "raised",
                                     AlertChannel.enabled.is_(True)).distinct()).all()
    for channel in told:
        _deliver(alert, channel, "resolved", now)
    log.info("alert %s resolved", key)
    return alert


def _channels_for(severity: str) -> list[AlertChannel]:
    rank = SEVERITY_RANK[severity]
    return [c for c in db.session.scalars(select(AlertChannel).where(AlertChannel.enabled.is_(True))
                                          .order_by(AlertChannel.id))
            if SEVERITY_RANK.get(c.min_severity, 1) <= rank]


def _deliver(alert: Alert, channel: AlertChannel, event: str, now: datetime) -> AlertDelivery:
    delivery = AlertDelivery(alert_id=alert.id, channel_id=channel.id, event=event, status="queued",
                             next_attempt_at=now, created_at=now)
    db.session.add(delivery)
    db.session.flush()
    _schedule(delivery.id, 0)
    return delivery


def _schedule(delivery_id: int, round_no: int) -> None:
    outbox.write(TOPIC, f"alert:{delivery_id}:send:{round_no}", {"delivery_id": delivery_id, "round": round_no})


# --- the periodic evaluation -------------------------------------------------------------------------------------

def evaluate(now: datetime | None = None, kinds: list[str] | None = None) -> dict:
    """Evaluate every rule (or those in `kinds`) once; commits per rule. Report: per kind, opened / resolved / open,
    or the error that stopped it."""
    now = now or utcnow()
    rows = ensure_rules()
    db.session.commit()
    report: dict[str, dict] = {}
    for kind, row in rows.items():
        if kinds and kind not in kinds:
            continue
        try:
            report[kind] = _evaluate_rule(row, now)
            db.session.commit()
        except Exception as exc:  # noqa: BLE001 - one broken source must not silence the other rules
            db.session.rollback()
            log.exception("alert rule %s failed", kind)
            report[kind] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return report


def _evaluate_rule(row: AlertRule, now: datetime) -> dict:
    open_keys = set(db.session.scalars(select(Alert.key).where(Alert.rule == row.kind, Alert.status == "open")))
    found = RULES[row.kind].evaluate(rule_config(row), now, open_keys) if row.enabled else []
    opened = 0
    for finding in found:
        opened += raise_alert(finding.key, row.kind, row.severity, finding.facts, now)[1]
    seen = {f.key for f in found}
    resolved = sum(resolve(key, now) is not None for key in sorted(open_keys - seen))
    return {"opened": opened, "resolved": resolved, "open": len(seen)}


# --- sending (the job) -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    status: str  # sent, retry, busy (not due / rate limit / another job holds it), failed, skipped
    delay: timedelta | None = None
    error: str | None = None


@outbox.handler(TOPIC, job_id=lambda payload: f"alert-{payload['delivery_id']}-{payload.get('round', 0)}")
def _run(message) -> None:
    outcome = send(json.loads(message.payload)["delivery_id"])
    outbox.settle(message, outcome.status, outcome.delay, outcome.error)


def retry_delays() -> list[timedelta]:
    return outbox.retry_schedule("ALERT_RETRY_SECONDS")


def rate_wait(channel: AlertChannel, now: datetime) -> timedelta | None:
    """How long the channel must wait before its next request, under every window of its robot's rate limit."""
    wait = timedelta(0)
    for limit, seconds in robots.RATE_LIMITS.get(channel.kind, ()):
        window = timedelta(seconds=seconds)
        recent = db.session.scalars(
            select(AlertDelivery.attempted_at).where(AlertDelivery.channel_id == channel.id,
                                                     AlertDelivery.attempted_at > now - window)
            .order_by(AlertDelivery.attempted_at.desc()).limit(limit)).all()
        if len(recent) >= limit:
            wait = max(wait, recent[limit - 1] + window - now)
    return wait if wait > timedelta(0) else None


def send(delivery_id: int) -> Outcome:
    """Send one queued delivery that is due and book the outcome; commits. Safe to run twice (the claim)."""
    now = utcnow()
    delivery = db.session.get(AlertDelivery, delivery_id)
    if delivery is None:
        return Outcome("skipped")
    # The channel's row lock serialises the rate check and the claim of its deliveries across workers.
    channel = db.session.scalars(select(AlertChannel).where(AlertChannel.id == delivery.channel_id)
                                 .with_for_update()).one()
    if delivery.status == "queued" and delivery.next_attempt_at and delivery.next_attempt_at > now:
        db.session.rollback()
        return Outcome("busy", delivery.next_attempt_at - now, "not due yet")
    wait = rate_wait(channel, now)
    if wait is not None and delivery.status == "queued":
        delivery.next_attempt_at = now + wait
        db.session.commit()
        return Outcome("busy", wait, "rate limit")
    table = AlertDelivery.__table__
    claim = {"claimed_at": now, "attempted_at": now, "attempts": table.c.attempts + 1}
    claimed = (states.move_all(ALERT_DELIVERY_STATES, "queued", "sending", table.c.id == delivery_id,
                               table.c.next_attempt_at <= now, **claim)
               or states.move_all(ALERT_DELIVERY_STATES, "sending", "sending", table.c.id == delivery_id,
                                  table.c.claimed_at < now - STALE_CLAIM, **claim))
    db.session.commit()
    if not claimed:
        return _not_claimed(delivery_id, now)
    delivery = db.session.get(AlertDelivery, delivery_id)
    db.session.refresh(delivery)
    channel, alert = delivery.channel, delivery.alert
    recipients: list[str] = []
    webhook = ""
    try:
        if not channel.enabled:
            raise robots.SendError(_("渠道已停用"), temporary=False)
        message = messages.compose(alert, delivery.event, channel.locale)
        if channel.kind == "email":
            recipients = _recipients(channel)
            robots.send_email(recipients, message, str(current_app.config.get("APP_NAME") or "Kameng"))
        else:
            webhook = crypto.decrypt(channel.webhook_enc) if channel.webhook_enc else ""
            if not webhook:
                raise robots.SendError(_("未配置 Webhook 地址"), temporary=False)
            secret = crypto.decrypt(channel.secret_enc) if channel.secret_enc else None
            robots.send_robot(channel.kind, webhook, secret, message)
    except robots.SendError as exc:
        return _failed(delivery, _scrub(exc.message, recipients, webhook), exc.temporary, exc.retry_after)
    except Exception as exc:  # noqa: BLE001 - a bug or a bad row must not leave the delivery claimed for ever
        db.session.rollback()
        delivery = db.session.get(AlertDelivery, delivery_id)
        return _failed(delivery, _scrub(f"{type(exc).__name__}: {str(exc)[:120]}", recipients, webhook), True, None)
    move_delivery(delivery, "sent", sent_at=utcnow(), last_error=None, next_attempt_at=None)
    channel.last_sent_at, channel.last_error = utcnow(), None
    db.session.commit()
    log.info("alert %s: %s message sent to channel %s", alert.key, delivery.event, channel.name)
    return Outcome("sent")


def move_delivery(delivery: AlertDelivery, new: str, **values: object) -> None:
    """The one place a delivery's status changes (ALERT_DELIVERY_STATES), guarded on the status the caller holds.
    Does not commit."""
    states.move(ALERT_DELIVERY_STATES, delivery.id, delivery.status, new, **values)


def _not_claimed(delivery_id: int, now: datetime) -> Outcome:
    row = db.session.execute(select(AlertDelivery.status, AlertDelivery.next_attempt_at, AlertDelivery.claimed_at)
                             .where(AlertDelivery.id == delivery_id)).first()
    db.session.rollback()
    if row is not None and row.status == "queued" and row.next_attempt_at is not None:
        return Outcome("busy", max(row.next_attempt_at - now, timedelta(0)), "not due yet")
    if row is not None and row.status == "sending" and row.claimed_at is not None:
        return Outcome("busy", max(row.claimed_at + STALE_CLAIM - now, timedelta(0)), "another job is sending it")
    return Outcome("skipped")


def _failed(delivery: AlertDelivery, error: str, temporary: bool, retry_after: timedelta | None) -> Outcome:
    delays = retry_delays()
    delivery.last_error = error[:255]
    delivery.channel.last_error = error[:255]
    if retry_after is not None:
        # The robot said "too fast": that request does not use up a retry; try again when it allows.
        delivery.attempts = max(0, delivery.attempts - 1)
        move_delivery(delivery, "queued", next_attempt_at=utcnow() + retry_after)
        db.session.commit()
        log.warning("alert delivery %s throttled by channel %s; again in %ss", delivery.id, delivery.channel.name,
                    int(retry_after.total_seconds()))
        return Outcome("retry", retry_after, error)
    if temporary and delivery.attempts <= len(delays):
        delay = delays[delivery.attempts - 1]
        move_delivery(delivery, "queued", next_attempt_at=utcnow() + delay)
        db.session.commit()
        log.warning("alert delivery %s to %s: attempt %s failed, retrying in %ss: %s", delivery.id,
                    delivery.channel.name, delivery.attempts, int(delay.total_seconds()), error)
        return Outcome("retry", delay, error)
    move_delivery(delivery, "failed", next_attempt_at=None)
    db.session.commit()
    log.warning("alert delivery %s to %s failed after %s attempt(s): %s", delivery.id, delivery.channel.name,
                delivery.attempts, error)
    return Outcome("failed", error=error)


def _scrub(text: str, recipients: list[str], webhook: str) -> str:
    """An error as stored and logged: no URL (a robot's carries its token), no address in full."""
    if webhook:
        text = text.replace(webhook, "<webhook>")
    text = _URL.sub("<url>", text)
    for address in sorted(recipients, key=len, reverse=True):
        text = text.replace(address, crypto.mask(address))
    return text


def _recipients(channel: AlertChannel) -> list[str]:
    raw = crypto.decrypt(channel.recipients_enc) if channel.recipients_enc else ""
    found = [a for a in raw.split(",") if a]
    if not found:
        raise robots.SendError(_("未配置收件人"), temporary=False)
    return found


# --- staff actions -----------------------------------------------------------------------------------------------

def send_test(channel_id: int, actor_id: int | None) -> Alert:
    """A test message to one channel (whatever its minimum severity), through the same job; audited. Commits."""
    channel = db.session.get(AlertChannel, channel_id)
    if channel is None:
        raise NotFound(_("告警渠道不存在"))
    if not channel.enabled:
        raise Conflict(_("渠道已停用，请先启用"))
    now = utcnow()
    facts = {"channel": channel.name}
    key = f"test:{channel.id}:{now.strftime('%Y%m%d%H%M%S%f')}"
    alert = Alert(key=key, open_key=None, rule="test", severity="info", status="resolved", facts=facts_json(facts),
                  summary=messages.summary("test", facts), occurrences=1, opened_at=now, last_seen_at=now,
                  resolved_at=now)
    db.session.add(alert)
    db.session.flush()
    _deliver(alert, channel, "raised", now)
    audit.record("alert_channel.test", "alert_channel", channel.id, None, {"alert": alert.id}, actor_id=actor_id)
    db.session.commit()
    return alert


def resend(delivery_id: int, actor_id: int | None) -> AlertDelivery:
    """Send a failed delivery again (after fixing the channel): queued now, audited. Commits."""
    delivery = db.session.scalar(select(AlertDelivery).where(AlertDelivery.id == delivery_id).with_for_update())
    if delivery is None:
        db.session.rollback()
        raise NotFound(_("发送记录不存在"))
    if delivery.status != "failed":
        db.session.rollback()
        raise Conflict(_("只有发送失败的消息可以重发"))
    before = {"status": delivery.status, "attempts": delivery.attempts, "last_error": delivery.last_error}
    move_delivery(delivery, "queued", attempts=0, next_attempt_at=utcnow(), claimed_at=None)
    audit.record("alert_delivery.resend", "alert_delivery", delivery.id, before, {"status": "queued"},
                 actor_id=actor_id)
    _schedule(delivery.id, int(utcnow().timestamp()))  # a new outbox message (and job id) per resend
    db.session.commit()
    return delivery


# --- channels ----------------------------------------------------------------------------------------------------

ROBOT_URL_NEEDS = {"dingtalk": ("access_token", lazy_gettext("钉钉 Webhook 须含 access_token")),
                   "wecom": ("key", lazy_gettext("企业微信 Webhook 须含 key")),
                   "feishu": ("/bot/v2/hook/", lazy_gettext("飞书 Webhook 须为 …/open-apis/bot/v2/hook/<token>"))}


def apply_channel(channel: AlertChannel, *, webhook: str | None = None, secret: str | None = None,
                  recipients: str | None = None, clear_secret: bool = False) -> None:
    """Check a channel as a form or a command sets it and store its secrets encrypted. Blank webhook, secret or
    recipients keep the stored ones. ValidationError with the reason."""
    from urllib.parse import parse_qs, urlsplit

    from app.notices.addresses import clean_email
    from app.notices.errors import InvalidEmail

    channel.name = (channel.name or "").strip()
    if not channel.name or len(channel.name) > 64:
        raise ValidationError(_("请填写名称（最多 64 个字符）"))
    if channel.kind not in CHANNEL_KINDS:
        raise ValidationError(_("请选择渠道类型"))
    channel.min_severity = channel.min_severity or "warning"
    if channel.min_severity not in SEVERITIES:
        raise ValidationError(_("最低级别须为提示、警告或严重"))
    channel.locale = channel.locale if channel.locale in ("zh", "en") else "zh"
    webhook, secret, recipients = (webhook or "").strip(), (secret or "").strip(), (recipients or "").strip()
    if channel.kind == "email":
        if webhook or secret:
            raise ValidationError(_("邮件渠道不需要 Webhook 地址和密钥"))
        if recipients:
            addresses = [a for a in re.split(r"[,;\s]+", recipients) if a]
            try:
                cleaned = [clean_email(a) for a in addresses]
            except InvalidEmail:
                raise ValidationError(_("收件人须为邮箱地址，多个用逗号分隔")) from None
            if not 1 <= len(cleaned) <= 20:
                raise ValidationError(_("收件人 1 到 20 个"))
            channel.recipients_enc = crypto.encrypt(",".join(cleaned))
            channel.recipients_masked = ", ".join(crypto.mask(a) for a in cleaned)[:255]
        if not channel.recipients_enc:
            raise ValidationError(_("请填写收件人邮箱"))
        channel.webhook_enc = channel.webhook_masked = channel.secret_enc = None
        return
    if webhook:
        parts = urlsplit(webhook)
        if parts.scheme not in ("https", "http") or not parts.hostname or any(c.isspace() for c in webhook):
            raise ValidationError(_("Webhook 须为 http(s) 地址"))
        if parts.scheme != "https" and current_app.config.get("KAMENG_ENV") != "development":
            raise ValidationError(_("Webhook 须为 https 地址"))
        if len(webhook) > 1024:
            raise ValidationError(_("Webhook 地址过长"))
        needle, message = ROBOT_URL_NEEDS[channel.kind]
        present = needle in parts.path if needle.startswith("/") else bool(parse_qs(parts.query).get(needle))
        if not present:
            raise ValidationError(message)
        channel.webhook_enc = crypto.encrypt(webhook)
        # The robot's token (a query value, or Feishu's last path segment) shows only its last 4 characters.
        path = parts.path.rsplit("/", 1)[0] + "/" if channel.kind == "feishu" else parts.path
        channel.webhook_masked = f"{parts.scheme}://{parts.hostname}{path[:48]}…{webhook[-4:]}"[:96]
    if not channel.webhook_enc:
        raise ValidationError(_("请填写 Webhook 地址"))
    if channel.kind == "wecom":
        if secret:
            raise ValidationError(_("企业微信群机器人不签名，不需要密钥"))
        channel.secret_enc = None
    elif clear_secret:
        channel.secret_enc = None
    elif secret:
        if len(secret) > 256 or any(c.isspace() for c in secret):
            raise ValidationError(_("密钥须为不含空白的文本（最多 256 个字符）"))
        channel.secret_enc = crypto.encrypt(secret)
    channel.recipients_enc = channel.recipients_masked = None
    channel.updated_at = utcnow()


def create_channel(name: str, kind: str, *, webhook: str | None = None, secret: str | None = None,
                   recipients: str | None = None, min_severity: str = "warning", locale: str = "zh",
                   actor_id: int | None = None) -> AlertChannel:
    """A channel from a command or a test (the screen is 告警渠道); audited without its secrets. Commits."""
    if db.session.scalar(select(AlertChannel.id).where(AlertChannel.name == (name or "").strip())):
        raise Conflict(_("已有同名渠道"))
    channel = AlertChannel(name=name, kind=kind, enabled=True, min_severity=min_severity, locale=locale,
                           created_at=utcnow(), updated_at=utcnow())
    apply_channel(channel, webhook=webhook, secret=secret, recipients=recipients)
    db.session.add(channel)
    db.session.flush()
    audit.record("alert_channel.create", "alert_channel", channel.id, None, channel_snapshot(channel),
                 actor_id=actor_id)
    db.session.commit()
    return channel


def channel_snapshot(channel: AlertChannel) -> dict:
    """What the audit log keeps of a channel: masked values and whether a secret is set, never the secret."""
    secret = "已设置" if channel.secret_enc else "未设置"  # i18n-keep: the audit log is kept in Chinese
    return {"name": channel.name, "kind": channel.kind, "enabled": channel.enabled,
            "webhook": channel.webhook_masked, "secret": secret,
            "recipients": channel.recipients_masked, "min_severity": channel.min_severity, "locale": channel.locale}

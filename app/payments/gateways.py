"""Payment channels' settings (stored encrypted) and the adapter for each: the one place that says which channels
exist, which are enabled, and that the sandbox does not exist in production."""
from __future__ import annotations

import json

from flask import current_app
from flask_babel import force_locale, gettext
from sqlalchemy import select

from app import cache, crypto
from app.audit import service as audit
from app.clock import utcnow
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.ledger.service import BUYER_FUNDS  # noqa: F401  (the payment side reads it here too)
from app.payments.models import CHANNEL_NAMES, PaymentChannel

CHANNEL_CODES = ("sandbox", "alipay", "wechatpay", "unionpay", "epay")
REMOTE_CHANNELS = ("alipay", "wechatpay", "unionpay", "epay")  # gateways we ask (query, close, refund, bill)


def clearing_account(channel: str) -> str:
    return f"platform:clearing:{channel}"


SANDBOX_ENVIRONMENTS = ("development",)


def sandbox_allowed() -> bool:
    """The sandbox lets anyone mint payments: it exists only with KAMENG_ENV=development, whatever its settings
    say (a production server under another name, or a typo, does not get it)."""
    return current_app.config.get("KAMENG_ENV") in SANDBOX_ENVIRONMENTS


def channel_exists(code: str) -> bool:
    return code in CHANNEL_CODES and (code != "sandbox" or sandbox_allowed())


def channel_row(code: str) -> PaymentChannel:
    row = db.session.scalar(select(PaymentChannel).where(PaymentChannel.code == code))
    if row is None:
        if code not in CHANNEL_CODES:
            raise NotFound(f"unknown payment channel {code!r}")
        with force_locale("zh"):  # a stored name, in the operators' language whoever creates the row
            name = str(CHANNEL_NAMES[code])
        row = PaymentChannel(code=code, name=name, enabled=False)
        db.session.add(row)
        db.session.flush()
    return row


def channel_settings(code: str) -> dict:
    """A channel's settings (its keys), decrypted; {} for a channel never configured."""
    settings = _channel_facts(code)[1]
    return json.loads(settings) if settings else {}


def _channel_facts(code: str) -> tuple[bool, str | None]:
    """(enabled, settings as JSON text) of a channel, kept in memory until a channel row changes (app.cache: every
    notification and checkout reads them)."""
    def load() -> tuple[bool, str | None]:
        row = db.session.execute(select(PaymentChannel.enabled, PaymentChannel.settings_enc)
                                 .where(PaymentChannel.code == code)).first()
        if row is None:
            return False, None
        return bool(row.enabled), crypto.decrypt(row.settings_enc) if row.settings_enc else None

    return cache.fetch("payment_channel", code, load)


def save_channel(code: str, enabled: bool, settings: dict, actor_id: int | None = None) -> PaymentChannel:
    """Store a channel's keys encrypted; the audit entry names which settings changed, never their values."""
    if code == "sandbox" and enabled and not sandbox_allowed():
        raise ValidationError(gettext("生产环境不能启用沙箱支付"))
    row = channel_row(code)
    before = channel_settings(code)
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    row.settings_enc = crypto.encrypt(json.dumps(settings))
    audit.record("channel.update", "payment_channel", code, {"enabled": row.enabled},
                 {"enabled": bool(enabled), "changed_settings": changed}, actor_id=actor_id)
    row.enabled = bool(enabled)
    row.updated_at = utcnow()
    db.session.commit()
    return row


def get_channel(code: str):
    """The adapter of a channel, built from its stored settings (an adapter with missing keys refuses everything)."""
    if not channel_exists(code):
        raise NotFound(f"unknown payment channel {code!r}")
    settings = channel_settings(code)
    if code == "sandbox":
        from app.payments.channels.sandbox import SandboxChannel as adapter
    elif code == "alipay":
        from app.payments.channels.alipay import AlipayChannel as adapter
    elif code == "wechatpay":
        from app.payments.channels.wechatpay import WechatPayChannel as adapter
    elif code == "epay":
        from app.payments.channels.epay import EpayChannel as adapter
    else:
        from app.payments.channels.unionpay import UnionPayChannel as adapter
    return adapter.from_settings(settings)


def enabled_channels() -> list[str]:
    codes = cache.fetch("payment_channels_enabled", None, lambda: tuple(db.session.scalars(
        select(PaymentChannel.code).where(PaymentChannel.enabled.is_(True)).order_by(PaymentChannel.id))))
    return [c for c in codes if channel_exists(c)]


def is_enabled(code: str) -> bool:
    return channel_exists(code) and _channel_facts(code)[0]

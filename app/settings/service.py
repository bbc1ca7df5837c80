"""Read and change platform settings. A setting not set in the form falls back to its config default.

Reads are cached per process for a few seconds: the purchase path asks on every order.
"""
from __future__ import annotations

import json
import time

from flask import current_app
from flask_babel import gettext

from app import crypto
from app.audit import service as audit
from app.clock import utcnow
from app.errors import ValidationError
from app.extensions import db
from app.settings.models import PlatformSetting

# key -> the config name holding its default
SETTINGS = {"realname_required_above": "REALNAME_REQUIRED_ABOVE",
            "staff_2fa_required": "STAFF_2FA_REQUIRED",  # staff must sign in with two-factor (app/twofactor)
            # delivery notices (app/notices): the SMTP server and the SMS provider
            "smtp_host": "SMTP_HOST", "smtp_port": "SMTP_PORT", "smtp_user": "SMTP_USER",
            "smtp_password": "SMTP_PASSWORD", "smtp_from": "SMTP_FROM", "smtp_tls": "SMTP_TLS",
            "sms_enabled": "SMS_ENABLED", "sms_endpoint": "SMS_ENDPOINT", "sms_access_key_id": "SMS_ACCESS_KEY_ID",
            "sms_access_key_secret": "SMS_ACCESS_KEY_SECRET", "sms_sign_name": "SMS_SIGN_NAME",
            "sms_template_code": "SMS_TEMPLATE_CODE",
            # agent shops (app/agentshops): the markups agents may set, in basis points of their own price
            "shop_markup_min_bp": "SHOP_MARKUP_MIN_BP",
            "shop_markup_max_bp": "SHOP_MARKUP_MAX_BP"}
MAX_SHOP_MARKUP_BP = 100_000  # a shop price of at most 11 times the agent's own
# Stored encrypted (app.crypto) and never written to the audit log: only whether they are set.
SECRET_SETTINGS = frozenset({"smtp_password", "sms_access_key_secret"})
_TEXT_SETTINGS = frozenset({"smtp_host", "smtp_user", "smtp_from", "sms_endpoint", "sms_access_key_id",
                            "sms_sign_name", "sms_template_code"}) | SECRET_SETTINGS
CACHE_SECONDS = 5.0
_UNSET = object()  # cached "no row": the config default applies, read live
_cache: dict[tuple[int, str], tuple[float, object]] = {}


def get(key: str):
    if key not in SETTINGS:
        raise KeyError(key)
    cache_key = (id(current_app._get_current_object()), key)
    hit = _cache.get(cache_key)
    if hit and hit[0] > time.monotonic():
        value = hit[1]
    else:
        row = db.session.get(PlatformSetting, key)
        value = json.loads(row.value) if row else _UNSET
        if key in SECRET_SETTINGS and isinstance(value, str) and value:
            value = crypto.decrypt(value)
        _cache[cache_key] = (time.monotonic() + CACHE_SECONDS, value)
    return current_app.config.get(SETTINGS[key]) if value is _UNSET else value


def _check_markup_bound(value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SHOP_MARKUP_BP:
        raise ValidationError(gettext("加价比例须在 0%% 到 %(max)s%% 之间", max=MAX_SHOP_MARKUP_BP // 100))


def shop_markup_bounds() -> tuple[int, int]:
    """(minimum, maximum) markup of an agent shop's prices over the agent's own, in basis points."""
    return int(get("shop_markup_min_bp") or 0), int(get("shop_markup_max_bp") or 0)


def set_shop_markup_bounds(minimum: int, maximum: int, actor_id: int | None) -> None:
    """Both bounds together (the minimum may not exceed the maximum); each change audited. Commits."""
    _check_markup_bound(minimum)
    _check_markup_bound(maximum)
    if minimum > maximum:
        raise ValidationError(gettext("最低加价不能高于最高加价"))
    current = shop_markup_bounds()
    if current[0] != minimum:
        set_value("shop_markup_min_bp", minimum, actor_id)
    if current[1] != maximum:
        set_value("shop_markup_max_bp", maximum, actor_id)


def forget_cached() -> None:
    """Drop cached values (tests that empty the database between cases)."""
    _cache.clear()


def set_value(key: str, value, actor_id: int | None) -> None:
    """Change a setting (commits) with an audit entry of the old and new value."""
    if key not in SETTINGS:
        raise ValidationError(f"unknown setting {key!r}")
    if key == "realname_required_above" and (not isinstance(value, int) or value < 0):
        raise ValidationError(gettext("金额不能为负"))
    if key in ("staff_2fa_required", "sms_enabled") and not isinstance(value, bool):
        raise ValidationError(gettext("必须为是或否"))
    _check(key, value)
    if key in ("shop_markup_min_bp", "shop_markup_max_bp"):
        _check_markup_bound(value)
    old = get(key)
    row = db.session.get(PlatformSetting, key)
    if row is None:
        row = PlatformSetting(key=key, value="null")
        db.session.add(row)
    stored = crypto.encrypt(value) if key in SECRET_SETTINGS and value else value
    row.value, row.updated_at, row.updated_by_id = json.dumps(stored), utcnow(), actor_id
    if key in SECRET_SETTINGS:  # the audit log says that it changed, never what it is
        old, value = ("已设置" if old else "未设置"), ("已设置" if value else "未设置")  # i18n-keep: data
    audit.record("setting.update", "setting", key, {key: old}, {key: value}, actor_id=actor_id)
    db.session.commit()
    _cache.pop((id(current_app._get_current_object()), key), None)


def clear(key: str, actor_id: int | None) -> bool:
    """Drop an override so the environment's value applies again (audited). False when there was none."""
    if key not in SETTINGS:
        raise ValidationError(f"unknown setting {key!r}")
    row = db.session.get(PlatformSetting, key)
    if row is None:
        return False
    old = "已设置" if key in SECRET_SETTINGS else get(key)  # i18n-keep: data
    db.session.delete(row)
    # i18n-keep: data
    audit.record("setting.clear", "setting", key, {key: old}, {key: "(环境变量 / environment)"}, actor_id=actor_id)
    db.session.commit()
    _cache.pop((id(current_app._get_current_object()), key), None)
    return True


def _check(key: str, value) -> None:
    """Values that would break a header or a connection are refused here, whichever form or command sets them."""
    if key in _TEXT_SETTINGS:
        if value is not None and (not isinstance(value, str) or len(value) > 255
                                  or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise ValidationError(gettext("须为不超过 255 个字符的单行文本"))
    if key == "smtp_port" and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535):
        raise ValidationError(gettext("端口须为 0-65535 的整数"))
    if key == "smtp_tls" and value not in ("starttls", "ssl", "none"):
        raise ValidationError(gettext("加密方式须为 starttls、ssl 或 none"))
    if key == "smtp_from" and value:
        from app.notices.addresses import parse_sender

        parse_sender(value)  # ValidationError when it is not an address (or "Name <address>")
    if key == "sms_endpoint" and value and not value.startswith(("https://", "http://")):
        raise ValidationError(gettext("短信接口地址须为 http(s) 地址"))

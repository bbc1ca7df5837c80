"""Read and change platform settings. A setting not set in the form falls back to its config default.

Reads are cached per process for a few seconds: the purchase path asks on every order.
"""
from __future__ import annotations

import json
import time

from flask import current_app

from app.audit import service as audit
from app.clock import utcnow
from app.errors import ValidationError
from app.extensions import db
from app.settings.models import PlatformSetting

# key -> the config name holding its default
SETTINGS = {"realname_required_above": "REALNAME_REQUIRED_ABOVE",
            "staff_2fa_required": "STAFF_2FA_REQUIRED",  # staff must sign in with two-factor (app/twofactor)
            # agent shops (app/agentshops): the markups agents may set, in basis points of their own price
            "shop_markup_min_bp": "SHOP_MARKUP_MIN_BP",
            "shop_markup_max_bp": "SHOP_MARKUP_MAX_BP"}
MAX_SHOP_MARKUP_BP = 100_000  # a shop price of at most 11 times the agent's own
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
        _cache[cache_key] = (time.monotonic() + CACHE_SECONDS, value)
    return current_app.config.get(SETTINGS[key]) if value is _UNSET else value


def _check_markup_bound(value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SHOP_MARKUP_BP:
        raise ValidationError(f"加价比例须在 0% 到 {MAX_SHOP_MARKUP_BP // 100}% 之间 "
                              f"(markup must be 0-{MAX_SHOP_MARKUP_BP} basis points)")


def shop_markup_bounds() -> tuple[int, int]:
    """(minimum, maximum) markup of an agent shop's prices over the agent's own, in basis points."""
    return int(get("shop_markup_min_bp") or 0), int(get("shop_markup_max_bp") or 0)


def set_shop_markup_bounds(minimum: int, maximum: int, actor_id: int | None) -> None:
    """Both bounds together (the minimum may not exceed the maximum); each change audited. Commits."""
    _check_markup_bound(minimum)
    _check_markup_bound(maximum)
    if minimum > maximum:
        raise ValidationError("最低加价不能高于最高加价 (the minimum markup is above the maximum)")
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
        raise ValidationError("金额不能为负 (amount must not be negative)")
    if key == "staff_2fa_required" and not isinstance(value, bool):
        raise ValidationError("必须为是或否 (must be yes or no)")
    if key in ("shop_markup_min_bp", "shop_markup_max_bp"):
        _check_markup_bound(value)
    old = get(key)
    row = db.session.get(PlatformSetting, key)
    if row is None:
        row = PlatformSetting(key=key, value="null")
        db.session.add(row)
    row.value, row.updated_at, row.updated_by_id = json.dumps(value), utcnow(), actor_id
    audit.record("setting.update", "setting", key, {key: old}, {key: value}, actor_id=actor_id)
    db.session.commit()
    _cache.pop((id(current_app._get_current_object()), key), None)

"""Settings, read once from the environment with typed parsing.

Defaults run on a SQLite file under instance/ with jobs inline. With KAMENG_ENV=production the app refuses to
start unless SECRET_KEY and CARD_SECRET_KEY are real secrets from the environment.
"""
from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
INSTANCE_DIR = BASE_DIR / "instance"

# Development keys: only ever used outside production (see check_production below).
_DEV_SECRET_KEY = "dev-only-secret-key-not-for-production"
_DEV_CARD_SECRET_KEY = "dev-only-card-secret-key-not-for-production"


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str) -> list[str]:
    raw = env_str(name, "") or ""
    return [part.strip() for part in raw.split(",") if part.strip()]


def database_url() -> str:
    url = env_str("DATABASE_URL")
    if url is None:
        INSTANCE_DIR.mkdir(exist_ok=True)
        return f"sqlite:///{INSTANCE_DIR / 'kameng.db'}"
    # psycopg 3 is the driver we ship; accept the common postgres:// spellings.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Config:
    KAMENG_ENV = env_str("KAMENG_ENV", "development")
    SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET_KEY)
    CARD_SECRET_KEY = env_str("CARD_SECRET_KEY", _DEV_CARD_SECRET_KEY)

    SQLALCHEMY_DATABASE_URI = database_url()
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    REDIS_URL = env_str("REDIS_URL")

    # Flask-AppBuilder
    APP_NAME = "卡盟 Kameng"
    APP_THEME = ""
    # Alembic owns the schema: `flask db upgrade` runs with FAB_CREATE_DB=False (see Makefile); at normal start
    # FAB only creates its built-in roles, because the tables already exist.
    FAB_CREATE_DB = env_bool("FAB_CREATE_DB", True)
    FAB_UPDATE_PERMS = env_bool("FAB_UPDATE_PERMS", True)  # off while migrating an empty database
    FAB_ADD_SECURITY_API = False
    FAB_API_SWAGGER_UI = False
    FAB_SECURITY_MANAGER_CLASS = "app.security.KamengSecurityManager"
    FAB_INDEX_VIEW = "app.portal.views.HomeView"
    AUTH_TYPE = 1  # AUTH_DB
    AUTH_ROLE_ADMIN = "Admin"
    AUTH_ROLE_PUBLIC = "Public"
    AUTH_USER_REGISTRATION = False
    AUTH_RATE_LIMITED = True
    AUTH_RATE_LIMIT = env_str("AUTH_RATE_LIMIT", "10 per 20 second")
    RATELIMIT_ENABLED = env_bool("RATELIMIT_ENABLED", True)
    RATELIMIT_STORAGE_URI = env_str("REDIS_URL", "memory://")
    WTF_CSRF_ENABLED = env_bool("WTF_CSRF_ENABLED", True)
    BABEL_DEFAULT_LOCALE = "zh"
    BABEL_DEFAULT_FOLDER = "translations"
    LANGUAGES = {
        "zh": {"flag": "cn", "name": "中文"},
        "en": {"flag": "gb", "name": "English"},
    }

    # Business settings
    COMMISSION_MAX_LEVELS = min(env_int("COMMISSION_MAX_LEVELS", 2), 3)
    # the tier screens warn when a tier's direct + indirect commission exceeds this share (bp of the paid amount)
    COMMISSION_WARN_TOTAL_BP = env_int("COMMISSION_WARN_TOTAL_BP", 2000)
    CARD_IMPORT_JOB_THRESHOLD = env_int("CARD_IMPORT_JOB_THRESHOLD", 5000)
    BUSINESS_TIMEZONE = env_str("BUSINESS_TIMEZONE", "Asia/Shanghai")
    LOW_STOCK_SCAN_SECONDS = env_int("LOW_STOCK_SCAN_SECONDS", 300)
    TRUSTED_PROXIES = env_int("TRUSTED_PROXIES", 0)
    RATELIMIT_HEADERS_ENABLED = True
    OPENAPI_RATE_LIMIT = env_str("OPENAPI_RATE_LIMIT", "1200 per minute")
    # Callbacks to loopback/private addresses are refused in production (SSRF); allowed elsewhere for local tests.
    OPENAPI_CALLBACK_ALLOW_PRIVATE = env_bool("OPENAPI_CALLBACK_ALLOW_PRIVATE", KAMENG_ENV != "production")
    OUTBOX_SWEEP_SECONDS = env_int("OUTBOX_SWEEP_SECONDS", 15)
    NONCE_PURGE_SECONDS = env_int("NONCE_PURGE_SECONDS", 600)
    WITHDRAWAL_POLL_SECONDS = env_int("WITHDRAWAL_POLL_SECONDS", 60)  # paying withdrawals: ask the bank
    # Analytics rollups: money flows folded from the ledger, delta rows compacted (app/analytics/service.py).
    ROLLUP_MONEY_SECONDS = env_int("ROLLUP_MONEY_SECONDS", 60)
    ROLLUP_COMPACT_SECONDS = env_int("ROLLUP_COMPACT_SECONDS", 300)
    ROLLUP_MONEY_BATCH = env_int("ROLLUP_MONEY_BATCH", 50000)  # journals per fold transaction
    # Journals younger than this wait for the next fold (a lower id may still be committing).
    ROLLUP_MONEY_LAG_SECONDS = env_int("ROLLUP_MONEY_LAG_SECONDS", 30)
    # PostgreSQL work_mem for one dashboard callback's transaction (its year aggregates stay in memory).
    DASHBOARD_WORK_MEM_MB = env_int("DASHBOARD_WORK_MEM_MB", 32)
    SUPPLIER_SYNC_SECONDS = env_int("SUPPLIER_SYNC_SECONDS", 300)  # suppliers' balance, stock and prices
    CHAIN_SEAL_SECONDS = env_int("CHAIN_SEAL_SECONDS", 5)  # tamper-evident records get their place in the chain
    # No REDIS_URL: run the periodic jobs on a thread of the web process (`make run` sets it for `flask run`).
    INLINE_SCHEDULER = env_bool("INLINE_SCHEDULER", False)
    RECHARGE_POLL_SECONDS = env_int("RECHARGE_POLL_SECONDS", 5)  # direct top-ups: ask suppliers about due attempts
    # An attempt still unknown after this long is flagged for support (it keeps being polled; never auto-refunded).
    RECHARGE_UNKNOWN_ALERT_MINUTES = env_int("RECHARGE_UNKNOWN_ALERT_MINUTES", 30)

    # Payments and the storefront
    ORDER_EXPIRE_MINUTES = env_int("ORDER_EXPIRE_MINUTES", 15)  # unpaid storefront orders close after this
    ORDER_EXPIRY_SCAN_SECONDS = env_int("ORDER_EXPIRY_SCAN_SECONDS", 60)
    LOOKUP_LINK_SECONDS = env_int("LOOKUP_LINK_SECONDS", 7 * 24 * 3600)  # signed order links expire
    SHOP_LOOKUP_RATE_LIMIT = env_str("SHOP_LOOKUP_RATE_LIMIT", "10 per minute")
    SHOP_ORDER_RATE_LIMIT = env_str("SHOP_ORDER_RATE_LIMIT", "30 per minute")
    PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL")  # how channels reach /pay/notify; default: the request's host
    # Notifications: per sending address; forged ones beyond this many an hour per address are not logged.
    NOTIFY_RATE_LIMIT = env_str("NOTIFY_RATE_LIMIT", "300 per minute")
    NOTIFY_REJECTED_LOG_PER_HOUR = env_int("NOTIFY_REJECTED_LOG_PER_HOUR", 100)
    PAY_STATUS_RATE_LIMIT = env_str("PAY_STATUS_RATE_LIMIT", "120 per minute")  # the QR page polls
    # Lost notifications: a started payment is asked about after this long without one (then with backoff).
    PAYMENT_QUERY_AFTER_SECONDS = env_int("PAYMENT_QUERY_AFTER_SECONDS", 180)
    PAYMENT_QUERY_SECONDS = env_int("PAYMENT_QUERY_SECONDS", 60)
    # A channel that cannot be reached to close an expired order keeps ours open this long past expiry.
    CHANNEL_CLOSE_GRACE_MINUTES = env_int("CHANNEL_CLOSE_GRACE_MINUTES", 60)
    REFUND_POLL_SECONDS = env_int("REFUND_POLL_SECONDS", 30)  # open refunds: ask the channels what is due
    REFUND_ALERT_ATTEMPTS = env_int("REFUND_ALERT_ATTEMPTS", 6)  # unanswered this many times: alert, keep asking
    MAX_CONTENT_LENGTH = env_int("MAX_CONTENT_LENGTH", 25 * 1024 * 1024)  # request bodies (statements: 20 MB)

    # Risk control (风控): storefront buyers' hard limits (agents: their tier's, defaulting to these), score
    # thresholds of the rules, how long a review hold may wait, and the key of the identifiers' hashes.
    RISK_ORDER_LIMIT_FEN = env_int("RISK_ORDER_LIMIT_FEN", 500_000)
    RISK_DAILY_LIMIT_FEN = env_int("RISK_DAILY_LIMIT_FEN", 2_000_000)
    RISK_REVIEW_SCORE = env_int("RISK_REVIEW_SCORE", 50)
    RISK_BLOCK_SCORE = env_int("RISK_BLOCK_SCORE", 100)
    RISK_REVIEW_HOURS = env_int("RISK_REVIEW_HOURS", 24)
    RISK_REVIEW_SLA_MINUTES = env_int("RISK_REVIEW_SLA_MINUTES", 30)  # the queue flags holds older than this
    RISK_HASH_KEY = env_str("RISK_HASH_KEY")  # default: derived from CARD_SECRET_KEY

    # Real-name verification (三要素 provider) and withdrawals (payout channel)
    IDV_PROVIDER_URL = env_str("IDV_PROVIDER_URL")
    IDV_PROVIDER_KEY = env_str("IDV_PROVIDER_KEY")
    IDV_PROVIDER_TIMEOUT = env_int("IDV_PROVIDER_TIMEOUT", 10)
    REALNAME_REQUIRED_ABOVE = env_int("REALNAME_REQUIRED_ABOVE", 0)  # fen; wallet purchases above need it; 0 = off
    WITHDRAWAL_DAILY_LIMIT = env_int("WITHDRAWAL_DAILY_LIMIT", 5_000_000)  # fen per agent per business day; 0 = none
    PAYOUT_URL = env_str("PAYOUT_URL")
    PAYOUT_KEY = env_str("PAYOUT_KEY")
    PAYOUT_TIMEOUT = env_int("PAYOUT_TIMEOUT", 10)


def check_production(config: dict) -> None:
    """Refuse to run in production with development keys or none."""
    if config.get("KAMENG_ENV") != "production":
        return
    problems = []
    if config.get("SECRET_KEY") in (None, "", _DEV_SECRET_KEY) or len(config["SECRET_KEY"]) < 32:
        problems.append("SECRET_KEY (at least 32 characters)")
    card_key = config.get("CARD_SECRET_KEY")
    if card_key in (None, "", _DEV_CARD_SECRET_KEY) or len(card_key) < 32:
        problems.append("CARD_SECRET_KEY (at least 32 characters)")
    if problems:
        raise RuntimeError("KAMENG_ENV=production needs real secrets in the environment: " + ", ".join(problems))

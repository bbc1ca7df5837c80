"""Settings, read once from the environment with typed parsing.

Defaults run on a SQLite file under instance/ with jobs inline. Configuration fails closed: only
KAMENG_ENV=development (set by `make run`, `make test`, the tests and the benches) runs on the built-in development
keys; with any other value (production, staging, a typo), or none, the app refuses to start until SECRET_KEY
and CARD_SECRET_KEY are real secrets and PUBLIC_BASE_URL an https address, and it sends Secure cookies and HSTS
(see settle_environment below).
"""
from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
INSTANCE_DIR = BASE_DIR / "instance"

# Development keys: published with the code, so only KAMENG_ENV=development may use them (settle_environment).
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


def smtp_tls_mode(raw: str | None) -> str:
    """SMTP_TLS: starttls (true, yes, 1, starttls: the default), ssl (implicit TLS, port 465) or none (false, no,
    0, none: plain, for a relay on the same host or a test server)."""
    value = (raw or "starttls").strip().lower()
    if value in ("1", "true", "yes", "on", "starttls"):
        return "starttls"
    if value in ("ssl", "tls", "implicit"):
        return "ssl"
    if value in ("0", "false", "no", "off", "none", "plain"):
        return "none"
    raise RuntimeError(f"SMTP_TLS must be starttls, ssl or none, got {raw!r}")


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
    KAMENG_ENV = env_str("KAMENG_ENV")  # unset is not development: real keys are required
    SECRET_KEY = env_str("SECRET_KEY")
    CARD_SECRET_KEY = env_str("CARD_SECRET_KEY")
    # Session and remember-me cookies: never sent cross-site, never read by scripts; Secure in production.
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    HSTS_SECONDS = env_int("HSTS_SECONDS", 365 * 24 * 3600)  # every environment but development

    SQLALCHEMY_DATABASE_URI = database_url()
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    # Pool settings per database: app.ops.outage.engine_options (PostgreSQL pings only a connection that sat idle).
    SQLALCHEMY_ENGINE_OPTIONS: dict = {}
    REDIS_URL = env_str("REDIS_URL")
    # The module mapping the job names services enqueue (app.queueing) to job functions: the worker side's.
    JOB_REGISTRY = "workers.jobs"

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
    # Redis down: each process counts limits in its own memory meanwhile (never a 500, never unlimited), and goes
    # back to Redis once it answers; short timeouts so a stalled Redis cannot hold a request.
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    RATELIMIT_SWALLOW_ERRORS = True
    RATELIMIT_STORAGE_OPTIONS = {"socket_timeout": 1, "socket_connect_timeout": 1}
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
    # X-RateLimit-* on every answer cost two Redis round trips per request; a refused one gets Retry-After
    # (app/headers.py)
    RATELIMIT_HEADERS_ENABLED = False
    OPENAPI_RATE_LIMIT = env_str("OPENAPI_RATE_LIMIT", "1200 per minute")
    # Outbound HTTP (app/outbound.py): callbacks, suppliers, channels, identity, payouts and alerts call global
    # addresses only; true lets them reach loopback/private ones (`make run` and tests, whose simulators listen on
    # 127.0.0.1). The size and time caps apply either way.
    OUTBOUND_ALLOW_PRIVATE = env_bool("OUTBOUND_ALLOW_PRIVATE", False)
    OUTBOUND_MAX_BYTES = env_int("OUTBOUND_MAX_BYTES", 1024 * 1024)  # an answer is cut (the call fails) past this
    OUTBOUND_CONNECT_TIMEOUT = env_int("OUTBOUND_CONNECT_TIMEOUT", 5)  # seconds, when the caller names none
    OUTBOUND_READ_TIMEOUT = env_int("OUTBOUND_READ_TIMEOUT", 15)
    OUTBOUND_DEADLINE_SECONDS = env_int("OUTBOUND_DEADLINE_SECONDS", 30)  # one whole call, answer read included
    OUTBOX_SWEEP_SECONDS = env_int("OUTBOX_SWEEP_SECONDS", 15)
    NONCE_PURGE_SECONDS = env_int("NONCE_PURGE_SECONDS", 600)
    WITHDRAWAL_POLL_SECONDS = env_int("WITHDRAWAL_POLL_SECONDS", 60)  # paying withdrawals: ask the bank
    # Analytics rollups: deliveries / refunds and money flows folded, delta rows compacted (app/analytics/service.py).
    ROLLUP_ORDERS_SECONDS = env_int("ROLLUP_ORDERS_SECONDS", 5)  # fold pending deliveries / refunds (with Redis)
    ROLLUP_ORDERS_BATCH = env_int("ROLLUP_ORDERS_BATCH", 5000)  # pending rows per fold transaction
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
    # The delivery promise (app/suppliers/sla.py): a direct top-up not delivered this long after payment is withdrawn
    # from its supplier and failed over (DELIVERY_SLA_FAILOVER), or refunded when no supplier is left
    # (DELIVERY_SLA_REFUND); never when its state at the supplier is unknown. The `delivery-sla` job's interval.
    DELIVERY_SLA_MINUTES = env_int("DELIVERY_SLA_MINUTES", 10)
    DELIVERY_SLA_FAILOVER = env_bool("DELIVERY_SLA_FAILOVER", True)
    DELIVERY_SLA_REFUND = env_bool("DELIVERY_SLA_REFUND", True)
    DELIVERY_SLA_SCAN_SECONDS = env_int("DELIVERY_SLA_SCAN_SECONDS", 60)

    # Payments and the storefront
    ORDER_EXPIRE_MINUTES = env_int("ORDER_EXPIRE_MINUTES", 15)  # unpaid storefront orders close after this
    ORDER_EXPIRY_SCAN_SECONDS = env_int("ORDER_EXPIRY_SCAN_SECONDS", 60)
    LOOKUP_LINK_SECONDS = env_int("LOOKUP_LINK_SECONDS", 7 * 24 * 3600)  # signed order links expire
    SHOP_LOOKUP_RATE_LIMIT = env_str("SHOP_LOOKUP_RATE_LIMIT", "10 per minute")
    # One budget per order number, whatever the address or entry point (lookup API and page, buyer disputes): after
    # this many wrong passwords within the window the order number answers 429 until the oldest try ages out.
    SHOP_LOOKUP_ORDER_FAILURES = env_int("SHOP_LOOKUP_ORDER_FAILURES", 10)
    SHOP_LOOKUP_ORDER_WINDOW_SECONDS = env_int("SHOP_LOOKUP_ORDER_WINDOW_SECONDS", 3600)
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
    # Real-name submissions that reach the provider (each one is billed, and each answers "do these match?"):
    # per agent per business day, per ID number per business day across agents, and a lockout after failures.
    REALNAME_DAILY_ATTEMPTS = env_int("REALNAME_DAILY_ATTEMPTS", 3)
    REALNAME_ID_ATTEMPTS = env_int("REALNAME_ID_ATTEMPTS", 3)
    REALNAME_LOCKOUT_FAILURES = env_int("REALNAME_LOCKOUT_FAILURES", 5)
    REALNAME_LOCKOUT_HOURS = env_int("REALNAME_LOCKOUT_HOURS", 24)
    REALNAME_REQUIRED_ABOVE = env_int("REALNAME_REQUIRED_ABOVE", 0)  # fen; wallet purchases above need it; 0 = off
    WITHDRAWAL_DAILY_LIMIT = env_int("WITHDRAWAL_DAILY_LIMIT", 5_000_000)  # fen per agent per business day; 0 = none
    PAYOUT_URL = env_str("PAYOUT_URL")
    PAYOUT_KEY = env_str("PAYOUT_KEY")
    PAYOUT_TIMEOUT = env_int("PAYOUT_TIMEOUT", 10)

    # Agent shops (分站, app/agentshops): the defaults of the 平台设置 bounds of a shop's markup over the agent's own
    # price (basis points), the platform's own host names besides PUBLIC_BASE_URL's (outside development any other
    # Host that is not an approved shop domain is answered 421), and how long approved domains are cached.
    SHOP_MARKUP_MIN_BP = env_int("SHOP_MARKUP_MIN_BP", 0)
    SHOP_MARKUP_MAX_BP = env_int("SHOP_MARKUP_MAX_BP", 5000)
    PLATFORM_HOSTS = env_list("PLATFORM_HOSTS")
    SHOP_DOMAIN_CACHE_SECONDS = env_int("SHOP_DOMAIN_CACHE_SECONDS", 30)
    # Production operations (app/ops): outages, probes, metrics, logs
    OUTAGE_RETRY_AFTER_SECONDS = env_int("OUTAGE_RETRY_AFTER_SECONDS", 5)  # Retry-After of the 503 answers
    DATABASE_CONNECT_TIMEOUT = env_int("DATABASE_CONNECT_TIMEOUT", 5)  # seconds; a new connection gives up after
    DATABASE_POOL_TIMEOUT = env_int("DATABASE_POOL_TIMEOUT", 10)  # seconds waiting for a pooled connection: 503
    METRICS_TOKEN = env_str("METRICS_TOKEN")  # /metrics for `Authorization: Bearer <token>`
    METRICS_ALLOW = env_list("METRICS_ALLOW")  # /metrics for these addresses / networks (e.g. 10.0.0.0/8)
    METRICS_CACHE_SECONDS = env_int("METRICS_CACHE_SECONDS", 5)  # database and queue figures reused this long
    LOG_FORMAT = env_str("LOG_FORMAT")  # json (default outside development) or text
    LOG_LEVEL = env_str("LOG_LEVEL", "INFO")

    # Staff two-factor sign-in (app/twofactor): the default of the 平台设置 switch that makes it mandatory.
    STAFF_2FA_REQUIRED = env_bool("STAFF_2FA_REQUIRED", False)

    # Delivery notices (app/notices): the buyer's optional e-mail with the card secrets, and an SMS with the order
    # number and lookup link. Every value here can be overridden in 平台设置 (the password and the SMS secret stored
    # encrypted there). SMTP_PORT 0 = the mode's usual port (587 starttls, 465 ssl, 25 none).
    SMTP_HOST = env_str("SMTP_HOST")
    SMTP_PORT = env_int("SMTP_PORT", 0)
    SMTP_USER = env_str("SMTP_USER")
    SMTP_PASSWORD = env_str("SMTP_PASSWORD")
    SMTP_FROM = env_str("SMTP_FROM")
    SMTP_TLS = smtp_tls_mode(env_str("SMTP_TLS"))
    SMTP_TIMEOUT = env_int("SMTP_TIMEOUT", 15)  # seconds, per connection step
    SMS_ENABLED = env_bool("SMS_ENABLED", False)
    SMS_ENDPOINT = env_str("SMS_ENDPOINT", "https://dysmsapi.aliyuncs.com/")  # Aliyun Dysmsapi (RPC style)
    SMS_ACCESS_KEY_ID = env_str("SMS_ACCESS_KEY_ID")
    SMS_ACCESS_KEY_SECRET = env_str("SMS_ACCESS_KEY_SECRET")
    SMS_SIGN_NAME = env_str("SMS_SIGN_NAME")
    SMS_TEMPLATE_CODE = env_str("SMS_TEMPLATE_CODE")  # a template holding ${order_no}; the lookup link is in its text
    # Seconds between a notice's attempts after the first (then it is given up and listed for support).
    NOTICE_RETRY_SECONDS = env_str("NOTICE_RETRY_SECONDS", "60,300,1800,7200,21600")
    # Alerts (app/alerts): how often the rules are evaluated; seconds between a message's attempts after the first
    # (then it is listed as failed on the alert's page).
    ALERT_EVALUATE_SECONDS = env_int("ALERT_EVALUATE_SECONDS", 60)
    ALERT_RETRY_SECONDS = env_str("ALERT_RETRY_SECONDS", "30,120,600,1800,7200")


class ConfigError(RuntimeError):
    """The environment cannot run the app safely; the message says what to set."""


def settle_environment(config: dict) -> None:
    """Fail closed: fill in the development keys for KAMENG_ENV=development only; any other value, or none, must
    bring real keys and an https PUBLIC_BASE_URL (each one missing is named) and gets Secure cookies and HSTS."""
    env = config.get("KAMENG_ENV")
    if env == "development":
        config["SECRET_KEY"] = config.get("SECRET_KEY") or _DEV_SECRET_KEY
        config["CARD_SECRET_KEY"] = config.get("CARD_SECRET_KEY") or _DEV_CARD_SECRET_KEY
        config["HSTS_SECONDS"] = 0
        return
    # Any other environment (production, staging, a typo, none) is held to production's rules: it may face the
    # internet, so it gets real keys, an https address, Secure cookies and HSTS.
    problems = [f"{name} (a random secret of at least 32 characters, not the development key)"
                for name, dev_key in (("SECRET_KEY", _DEV_SECRET_KEY), ("CARD_SECRET_KEY", _DEV_CARD_SECRET_KEY))
                if _weak_key(config.get(name), dev_key)]
    base_url = config.get("PUBLIC_BASE_URL") or ""
    if not base_url.startswith("https://") or len(base_url) <= len("https://"):
        problems.append("PUBLIC_BASE_URL (the https:// address buyers and payment channels reach)")
    if problems:
        shown = f"KAMENG_ENV={env}" if env else "KAMENG_ENV is not set, which"
        raise ConfigError(f"{shown} is not development, so it runs only on real settings (the built-in development "
                          f"keys are refused). Set in the environment: " + "; ".join(problems) + ". For a local demo "
                          "on development keys, set KAMENG_ENV=development.")
    token = config.get("METRICS_TOKEN")
    if token and len(token) < 32:
        raise ConfigError("METRICS_TOKEN must be a random secret of at least 32 characters (or unset, with "
                          "METRICS_ALLOW naming the addresses that may read /metrics).")
    config["SESSION_COOKIE_SECURE"] = True
    config["REMEMBER_COOKIE_SECURE"] = True
    config["PREFERRED_URL_SCHEME"] = "https"


def _weak_key(value: str | None, dev_key: str) -> bool:
    return not value or value == dev_key or len(value) < 32

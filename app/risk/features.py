"""The named features rules are written over (风控特征): the event's own values and velocity counters over sliding
windows. Every rule sees every feature (rule-engine raises on a missing name only when it reaches it)."""
from __future__ import annotations

from app.risk.counters import Query

HOUR, DAY = 3600, 86400

# name -> counter query. Metrics: order (a checkout or purchase, with its amount), registration, refund, dispute,
# payment_failed, topup, withdrawal, login_failed.
COUNTERS: dict[str, Query] = {
    "orders_ip_1h": Query("order", "ip", HOUR),
    "orders_device_1h": Query("order", "device", HOUR),
    "orders_contact_1h": Query("order", "contact", HOUR),
    "orders_agent_1h": Query("order", "agent", HOUR),
    "orders_device_10m": Query("order", "device", 600),
    "orders_contact_10m": Query("order", "contact", 600),
    "orders_agent_10m": Query("order", "agent", 600),
    "orders_ip_10m": Query("order", "ip", 600),
    "amount_contact_24h": Query("order", "contact", DAY, "amount"),
    "amount_device_24h": Query("order", "device", DAY, "amount"),
    "amount_agent_24h": Query("order", "agent", DAY, "amount"),
    "contacts_per_device_24h": Query("order", "device", DAY, "distinct", "contact"),
    "contacts_per_ip_24h": Query("order", "ip", DAY, "distinct", "contact"),
    "devices_per_contact_24h": Query("order", "contact", DAY, "distinct", "device"),
    "payment_accounts_per_device_24h": Query("payment", "device", DAY, "distinct", "payment_account"),
    "payment_accounts_per_contact_24h": Query("payment", "contact", DAY, "distinct", "payment_account"),
    "payment_failures_device_1h": Query("payment_failed", "device", HOUR),
    "payment_failures_contact_1h": Query("payment_failed", "contact", HOUR),
    "registrations_ip_10m": Query("registration", "ip", 600),
    "registrations_ip_1h": Query("registration", "ip", HOUR),
    "registrations_device_24h": Query("registration", "device", DAY),
    "refunds_contact_30d": Query("refund", "contact", 30 * DAY),
    "refunds_agent_30d": Query("refund", "agent", 30 * DAY),
    "disputes_contact_30d": Query("dispute", "contact", 30 * DAY),
    "refunds_device_30d": Query("refund", "device", 30 * DAY),  # abusers rotate contacts, not their phone
    "disputes_device_30d": Query("dispute", "device", 30 * DAY),
    "disputes_agent_30d": Query("dispute", "agent", 30 * DAY),
    "coupon_orders_device_24h": Query("coupon_order", "device", DAY),
    "coupon_orders_ip_1h": Query("coupon_order", "ip", HOUR),
    "topups_agent_24h": Query("topup", "agent", DAY),
    "topup_amount_agent_24h": Query("topup", "agent", DAY, "amount"),
    "withdrawals_agent_24h": Query("withdrawal", "agent", DAY),
    "logins_failed_ip_1h": Query("login_failed", "ip", HOUR),
}

# The event's own values (filled by the entry point; absent ones keep these defaults).
EVENT_DEFAULTS: dict[str, object] = {
    "event": "",
    "amount": 0,  # fen
    "quantity": 0,
    "has_coupon": False,
    "is_guest": False,  # a storefront buyer without an account
    "account_age_hours": 1e9,  # an agent's age; guests: unknown (large)
    "verified_age_hours": 1e9,  # hours since the agent's real name was verified (large when never)
    "minutes_since_topup": 1e9,  # minutes since the agent's last wallet top-up was paid
    "topup_share": 0.0,  # for a withdrawal: the part of the wallet that came from unspent top-ups (0..1)
    "order_limit": 0,  # fen: the per-order limit in force for this buyer
    "daily_limit": 0,  # fen: the per-day limit in force
    "daily_used": 0,  # fen already counted today for this buyer (max over contact, device, account)
    "hour_local": 0,  # business-time hour of the day
}

# What the active fraud model (app/risk/learning/model.py) makes of the rest, 0..1; with no active model it stays at
# this neutral value (no evidence), so a rule like `model_score > 0.9` simply does not fire. Set only by evaluate.
MODEL_DEFAULTS: dict[str, object] = {"model_score": 0.0}

RULE_FEATURES = {**dict.fromkeys(COUNTERS, 0), **EVENT_DEFAULTS, **MODEL_DEFAULTS}

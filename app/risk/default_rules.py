"""The default rule set (默认规则), installed by `flask kameng risk rules install-defaults` and by the demo. Each
is an expression over app/risk/features.py; `score` rules add points (RISK_REVIEW_SCORE holds for review,
RISK_BLOCK_SCORE blocks), `review` and `block` rules decide alone. Admins edit them in 风控规则."""
from __future__ import annotations

from sqlalchemy import select

from app.extensions import db
from app.risk.models import RiskRule, RiskRuleVersion

DEFAULT_RULES = [
    {"name": "high_frequency_device", "events": "shop_checkout,checkout",
     "expression": "orders_device_10m >= 5 or orders_device_1h >= 12", "action": "review", "score": 0,
     "reason": "同一设备短时间内大量下单 (high-frequency orders from one device)"},
    {"name": "high_frequency_contact", "events": "shop_checkout,checkout",
     "expression": "orders_contact_10m >= 5 or orders_contact_1h >= 12", "action": "review", "score": 0,
     "reason": "同一联系方式短时间内大量下单 (high-frequency orders from one contact)"},
    {"name": "high_frequency_agent", "events": "portal_purchase,openapi_order",
     "expression": "orders_agent_10m >= 60", "action": "review", "score": 0,
     "reason": "代理短时间内异常高频采购 (an agent's purchase burst)"},
    {"name": "one_device_many_contacts", "events": "shop_checkout,checkout",
     "expression": "contacts_per_device_24h >= 4", "action": "review", "score": 0,
     "reason": "同一设备使用多个联系方式 (one device, many buyer accounts)"},
    {"name": "one_device_many_payment_accounts", "events": "shop_checkout,checkout,payment",
     "expression": "payment_accounts_per_device_24h >= 3", "action": "block", "score": 0,
     "reason": "同一设备使用多个支付账号 (card testing: one device, many payment accounts)"},
    {"name": "one_ip_many_registrations", "events": "registration",
     "expression": "registrations_ip_1h >= 5 or registrations_device_24h >= 3", "action": "review", "score": 0,
     "reason": "同一 IP 或设备批量注册 (an account farm: many registrations from one IP or device)"},
    {"name": "structuring_under_the_limit", "events": "shop_checkout,checkout,portal_purchase,openapi_order",
     "expression": "order_limit > 0 and amount >= order_limit * 0.9 and orders_contact_1h + orders_device_1h >= 2",
     "action": "review", "score": 0,
     "reason": "多笔接近单笔限额的订单 (structuring: repeated orders just under the limit)"},
    {"name": "near_daily_limit", "events": "shop_checkout,checkout,portal_purchase,openapi_order",
     "expression": "daily_limit > 0 and daily_used + amount >= daily_limit * 0.9", "action": "score",
     "score": 30, "reason": "当日累计接近限额 (close to the daily limit)"},
    {"name": "many_failed_payments", "events": "shop_checkout,checkout",
     "expression": "payment_failures_device_1h >= 3 or payment_failures_contact_1h >= 3", "action": "review",
     "score": 0, "reason": "多次支付失败后再次下单 (many failed payments)"},
    {"name": "new_account_big_order", "events": "portal_purchase,openapi_order,wallet_topup",
     "expression": "account_age_hours < 24 and amount >= 100000", "action": "review", "score": 0,
     "reason": "新注册账号大额交易 (new account, big order)"},
    {"name": "refund_abuse", "events": "shop_checkout,checkout,portal_purchase,openapi_order",
     "expression": "refunds_contact_30d + disputes_contact_30d >= 3 or refunds_agent_30d + disputes_agent_30d >= 5",
     "action": "review", "score": 0, "reason": "退款或维权次数过多 (refund abuse)"},
    {"name": "coupon_farming", "events": "shop_checkout,checkout",
     "expression": "has_coupon and coupon_orders_device_24h >= 3", "action": "review", "score": 0,
     "reason": "同一设备反复使用优惠券 (coupon abuse from one device)"},
    {"name": "withdraw_after_topup", "events": "withdrawal",
     "expression": "minutes_since_topup < 1440 or topup_share > 0", "action": "review", "score": 0,
     "reason": "充值后短时间内提现 (a withdrawal shortly after a top-up)"},
    {"name": "withdraw_fresh_verification", "events": "withdrawal",
     "expression": "verified_age_hours < 24", "action": "review", "score": 0,
     "reason": "刚完成实名认证即提现 (a withdrawal from a freshly verified account)"},
    {"name": "login_bruteforce", "events": "login", "expression": "logins_failed_ip_1h >= 20", "action": "block",
     "score": 0, "reason": "同一 IP 多次登录失败 (password guessing from one IP)"},
]


def install_defaults(status: str = "active") -> int:
    """Add the default rules that are not there yet (by name); returns how many were added. Commits."""
    existing = set(db.session.scalars(select(RiskRule.name)))
    added = 0
    for spec in DEFAULT_RULES:
        if spec["name"] in existing:
            continue
        rule = RiskRule(status=status, version=1, **spec)
        db.session.add(rule)
        db.session.flush()
        db.session.add(version_of(rule))
        added += 1
    db.session.commit()
    from app.risk.service import forget_rules

    forget_rules()
    return added


def version_of(rule: RiskRule) -> RiskRuleVersion:
    return RiskRuleVersion(rule_id=rule.id, version=rule.version, name=rule.name, events=rule.events,
                           expression=rule.expression, action=rule.action, score=rule.score, reason=rule.reason,
                           status=rule.status)

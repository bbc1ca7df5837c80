"""The default rule set (默认规则), installed by `flask kameng risk rules install-defaults` and by the demo. Each
is an expression over app/risk/features.py; `score` rules add points (RISK_REVIEW_SCORE holds for review,
RISK_BLOCK_SCORE blocks), `review` and `block` rules decide alone. Admins edit them in 风控规则."""
# i18n-keep-file: the default rules become rows an admin edits (reasons are stored data, shown as written)
from __future__ import annotations

from sqlalchemy import select

from app.extensions import db
from app.risk.models import RiskRule, RiskRuleVersion

SHOP = "shop_checkout,checkout"
AGENT_BUYS = "portal_purchase,openapi_order"

# Thresholds are about what one real person does, not about any one data set: a rule counts the events BEFORE the
# one being decided (the counters are read before it is recorded), so ">= 2" fires on the third.
DEFAULT_RULES = [
    # A person at a shop places one order, maybe a second when a payment failed and they try again; a third within
    # ten minutes (or a ninth within the hour) from one device or contact is a script, a card tester or a taken-over
    # account. Review, not block: a buyer stocking up for friends still gets served after a look.
    {"name": "high_frequency_device", "events": SHOP,
     "expression": "orders_device_10m >= 2 or orders_device_1h >= 8", "action": "review", "score": 0,
     "reason": "同一设备短时间内大量下单 (high-frequency orders from one device)"},
    {"name": "high_frequency_contact", "events": SHOP,
     "expression": "orders_contact_10m >= 2 or orders_contact_1h >= 8", "action": "review", "score": 0,
     "reason": "同一联系方式短时间内大量下单 (high-frequency orders from one contact)"},
    # Agents resell in bulk through the Open API: only a burst no reseller's shop front produces (more than one
    # order every ten seconds for ten minutes) is looked at.
    {"name": "high_frequency_agent", "events": AGENT_BUYS,
     "expression": "orders_agent_10m >= 60", "action": "review", "score": 0,
     "reason": "代理短时间内异常高频采购 (an agent's purchase burst)"},
    # A family shares a phone or a PC (two contacts); three or more contacts on one device in a day is someone
    # cycling identities (coupon farming, card testing under fresh names).
    {"name": "one_device_many_contacts", "events": SHOP,
     "expression": "contacts_per_device_24h >= 3", "action": "review", "score": 0,
     "reason": "同一设备使用多个联系方式 (one device, many buyer accounts)"},
    # Card testing: a buyer pays with their own account, now and then another one (a spouse's, WeChat instead of
    # Alipay): two. Three different payment accounts behind one device in a day is a list of stolen accounts
    # being tried: blocked when it comes with repeated orders within the hour (how testing runs), reviewed alone
    # (a household sharing a tablet can get there over a day).
    {"name": "one_device_many_payment_accounts", "events": SHOP,
     "expression": "payment_accounts_per_device_24h >= 3 and orders_device_1h >= 2", "action": "block",
     "score": 0, "reason": "同一设备使用多个支付账号 (card testing: one device, many payment accounts)"},
    {"name": "device_several_payment_accounts", "events": SHOP,
     "expression": "payment_accounts_per_device_24h >= 3", "action": "review", "score": 0,
     "reason": "同一设备当日使用三个以上支付账号 (one device, three or more payment accounts today)"},
    # Registrations: carrier NAT puts many people behind one IP, but sign-ups are rare events (a few per address
    # per day even behind NAT): a third from one address within ten minutes (or a sixth within the hour) is a
    # farm; one device signing up a second agent the same day is one person making accounts.
    {"name": "one_ip_many_registrations", "events": "registration",
     "expression": "registrations_ip_10m >= 2 or registrations_ip_1h >= 5 or registrations_device_24h >= 1",
     "action": "review", "score": 0,
     "reason": "同一 IP 或设备批量注册 (an account farm: many registrations from one IP or device)"},
    # Structuring: a guest order in the top tenth of the per-order limit is rare for game cards and is how the
    # limit is walked around (several orders just under it, spread over contacts); each one gets a look. Agents
    # buy big legitimately: theirs only when it repeats within the hour.
    {"name": "structuring_under_the_limit", "events": SHOP,
     "expression": "is_guest and order_limit > 0 and amount >= order_limit * 0.9", "action": "review",
     "score": 0, "reason": "接近单笔限额的游客订单 (structuring: an order just under the per-order limit)"},
    {"name": "agent_structuring", "events": AGENT_BUYS,
     "expression": "order_limit > 0 and amount >= order_limit * 0.9 and orders_agent_1h >= 3 and "
                   "amount_agent_24h >= order_limit * 2.5", "action": "score", "score": 30,
     "reason": "代理多笔接近单笔限额的订单 (an agent's repeated orders just under the limit)"},
    {"name": "near_daily_limit", "events": SHOP + "," + AGENT_BUYS,
     "expression": "daily_limit > 0 and daily_used + amount >= daily_limit * 0.9", "action": "score",
     "score": 30, "reason": "当日累计接近限额 (close to the daily limit)"},
    # Failed payments are counted where a channel reports them: three within the hour, then a new order.
    {"name": "many_failed_payments", "events": SHOP,
     "expression": "payment_failures_device_1h >= 3 or payment_failures_contact_1h >= 3", "action": "review",
     "score": 0, "reason": "多次支付失败后再次下单 (many failed payments)"},
    # An agent three days old moving ¥1,000 or more: new agents start small; mules top up big at once.
    {"name": "new_account_big_order", "events": AGENT_BUYS + ",wallet_topup",
     "expression": "account_age_hours < 72 and amount >= 100000", "action": "review", "score": 0,
     "reason": "新注册账号大额交易 (new account, big order)"},
    # Refund abuse: one refund or dispute a month happens to anyone; a second one on the same contact or device
    # (abusers change contacts, rarely phones) makes the next order a manual one. Agents sell to many buyers:
    # five a month.
    {"name": "refund_abuse", "events": SHOP + "," + AGENT_BUYS,
     "expression": "refunds_contact_30d + disputes_contact_30d >= 2 or refunds_device_30d + disputes_device_30d >= 2"
                   " or refunds_agent_30d + disputes_agent_30d >= 5",
     "action": "review", "score": 0, "reason": "退款或维权次数过多 (refund abuse)"},
    # Coupons are per buyer; a device that already redeemed one today is one person farming new-buyer coupons
    # under fresh contacts. Behind one address: a carrier IP sees coupons on a small share of its orders; an
    # address where most of the last hour's orders (three or more) carried a coupon is a farm of devices.
    {"name": "coupon_farming", "events": SHOP,
     "expression": "has_coupon and (coupon_orders_device_24h >= 1 or "
                   "(coupon_orders_ip_1h >= 2 and coupon_orders_ip_1h * 2 >= orders_ip_1h))",
     "action": "review", "score": 0, "reason": "同一设备或 IP 反复使用优惠券 (coupon abuse)"},
    # Laundering: money topped up is not withdrawable until spent (topup_share > 0 means the request reaches for
    # it); a withdrawal within two hours of a top-up by an agent less than a month old is the in-and-out of a
    # mule account. Established resellers top up several times a day, so for them timing alone says nothing.
    {"name": "withdraw_after_topup", "events": "withdrawal",
     "expression": "topup_share > 0 or (minutes_since_topup < 120 and account_age_hours < 720)",
     "action": "review", "score": 0,
     "reason": "充值后短时间内提现 (a withdrawal shortly after a top-up)"},
    {"name": "withdraw_fresh_verification", "events": "withdrawal",
     "expression": "verified_age_hours < 24", "action": "review", "score": 0,
     "reason": "刚完成实名认证即提现 (a withdrawal from a freshly verified account)"},
    # The fraud model's score (app/risk/learning/model.py): rules decide what it means. Installed as a shadow rule
    # (it only records what it would have held) until an admin turns it on beside an active model; with no
    # active model model_score is 0.0 and it never fires.
    {"name": "model_score_high", "events": SHOP + "," + AGENT_BUYS + ",wallet_topup,withdrawal",
     "expression": "model_score > 0.9", "action": "review", "score": 0, "status": "shadow",
     "reason": "风控模型评分高 (the fraud model scores it above 0.9)"},
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
        # a rule that ships as a shadow stays one unless everything is installed as a draft
        spec = {**spec, "status": "draft" if status == "draft" else spec.get("status", status)}
        rule = RiskRule(version=1, **spec)
        db.session.add(rule)
        db.session.flush()
        db.session.add(version_of(rule))
        added += 1
    db.session.commit()
    return added


def version_of(rule: RiskRule) -> RiskRuleVersion:
    return RiskRuleVersion(rule_id=rule.id, version=rule.version, name=rule.name, events=rule.events,
                           expression=rule.expression, action=rule.action, score=rule.score, reason=rule.reason,
                           status=rule.status)

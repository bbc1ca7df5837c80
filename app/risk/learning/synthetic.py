"""The synthetic risk history (风控合成数据): a seeded business day of legitimate traffic with injected attacks, the
data it needs (tiers, agents, lists, rules), and the run of every event through app.risk.service.evaluate, recording
what happened as the entry points do. bench/risk.py measures the rules (and the model) on it; the tests and
`flask kameng demo` use it as a labelled history (`load_history`: every decision labelled with the generator's
ground truth, source `synthetic`) that `flask kameng risk model train` learns from.

Legitimate traffic: storefront buyers with their own phones, devices and IPs (a share behind carrier NAT IPs,
households sharing a device, buyers on two devices, payment retries, first-order coupons, the odd past refund),
agents buying through the portal and the Open API, wallet top-ups, withdrawals of earnings, registrations.
Attacks: card testing (one device, many payment accounts), account farms (many registrations from one IP / device),
velocity bursts, structuring just under the per-order limit, refund abuse, coupon abuse, and top-up then withdraw.

Orders are written as rows only (status pending_payment / paid / reviewing / refunded, no card secrets or journals:
the limits need only what is counted). A storefront order is one event: its checkout decision, and, when it is paid,
the payment decision on the paying account (anything but allow holds it, as app/payments/service.py does).
"""
# i18n-keep-file: synthetic data (tiers, products, rules, list reasons) stored as an operator would type it
from __future__ import annotations

import heapq
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

ATTACKS = ("card_testing", "account_farm", "velocity_burst", "structuring", "refund_abuse", "coupon_abuse",
           "topup_withdraw")
DAY = 86400.0
CARRIER_IPS = 24  # carrier-grade NAT addresses many buyers share
# (face price fen, weight): what a card shop sells to the public.
SHOP_PRICES = ((1000, 20), (3000, 18), (5000, 16), (10000, 20), (20000, 10), (30000, 5), (50000, 6), (100000, 3),
               (200000, 1.2), (300000, 0.5), (400000, 0.2), (480000, 0.08), (500000, 0.05))
AGENT_PRICES = ((1000, 15), (5000, 20), (10000, 25), (50000, 20), (100000, 12), (200000, 5), (500000, 3))
TIERS = (  # name, rank, discount, per-order limit, per-day limit (fen); names get the data's prefix
    ("铜牌", 10, 9800, 500_000, 5_000_000),
    ("银牌", 20, 9600, 1_000_000, 20_000_000),
    ("金牌", 30, 9400, 2_000_000, 100_000_000),
)


@dataclass
class Ev:
    """One business event of the day (evaluated), or a follow-up that is only recorded."""
    t: float
    kind: str  # shop_checkout, portal_purchase, openapi_order, wallet_topup, withdrawal, registration
    label: str  # legit or an attack name
    amount: int = 0
    ip: str | None = None
    device: str | None = None
    contact: str | None = None
    payment_account: str | None = None  # who pays (storefront), None: never paid
    agent: int | None = None  # index into the agents
    values: dict = field(default_factory=dict)
    pay_after: float = 60.0
    refund_after: float | None = None  # seconds after payment the buyer has it refunded
    dispute: bool = False


@dataclass
class Past:
    """History before the day (refunds and disputes of the last 30 days, earlier registrations)."""
    days_ago: float
    metric: str
    contact: str | None = None
    device: str | None = None
    ip: str | None = None
    agent: int | None = None


@dataclass
class Day:
    events: list[Ev]
    past: list[Past]
    agents: list[dict]  # {"tier": 0..2, "age_hours": float, "verified_hours": float}


# ---------------------------------------------------------------------------------------------------------------
# The generator


class Gen:
    def __init__(self, n: int, seed: int):
        self.n, self.r = n, random.Random(seed)
        self.events: list[Ev] = []
        self.past: list[Past] = []
        self.seq = 0
        self.carrier = [f"117.136.{self.r.randrange(256)}.{self.r.randrange(1, 255)}" for _ in range(CARRIER_IPS)]
        self.agents = [self._agent() for _ in range(max(60, n // 60))]
        # How much each agent buys: a few big resellers, many small ones; the big ones sit on the higher tiers
        # (an operator sets an agent's tier, and so its limits, to fit its volume).
        self.weights = [min(self.r.paretovariate(1.2), 40.0) for _ in self.agents]
        ranked = sorted(range(len(self.agents)), key=lambda i: -self.weights[i])
        for place, i in enumerate(ranked):
            self.agents[i]["tier"] = 2 if place < len(ranked) * 0.1 else 1 if place < len(ranked) * 0.4 else 0

    def uid(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.seq:07d}{self.r.randrange(10 ** 6):06d}"

    def phone(self) -> str:
        return f"1{self.r.choice('3456789')}{self.r.randrange(10 ** 9):09d}"

    def ip(self, carrier_share: float = 0.35) -> str:
        if self.r.random() < carrier_share:
            return self.r.choice(self.carrier)
        first = self.r.choice((36, 39, 58, 59, 60, 61, 101, 110, 112, 113, 114, 115, 116, 120, 121, 122, 123, 124))
        return f"{first}.{self.r.randrange(256)}.{self.r.randrange(256)}.{self.r.randrange(1, 255)}"

    def daytime(self) -> float:
        """A time of day shaped like a shop's traffic: quiet at night, busy in the evening."""
        while True:
            t = self.r.random() * DAY
            hour = t / 3600
            weight = 0.15 if hour < 7 else 0.6 if hour < 11 else 0.8 if hour < 18 else 1.0
            if self.r.random() < weight:
                return t

    def start(self, span: float) -> float:
        """When a campaign of about `span` seconds starts, so that it ends within the day."""
        return self.r.uniform(0, max(0.0, DAY - span))

    def campaign(self, total: int, low: int, high: int) -> int:
        """The size of the next campaign of an attack with `total` events left (no stub left over at the end)."""
        size = self.r.randint(low, high)
        return total if total - size < low else size

    def price(self, table) -> int:
        return self.r.choices([p for p, _ in table], [w for _, w in table])[0]

    def _agent(self) -> dict:
        r = self.r.random()
        age = self.r.uniform(1, 72) if r < 0.03 else self.r.uniform(72, 24 * 700)
        verified = age - self.r.uniform(0, min(age, 48)) if self.r.random() < 0.8 else 1e9
        return {"tier": self.r.choices((0, 1, 2), (60, 30, 10))[0], "age_hours": age,
                "verified_hours": verified if verified != 1e9 else 1e9, "kind": "legit"}

    def add(self, ev: Ev) -> None:
        self.events.append(ev)

    # --- legitimate ---------------------------------------------------------------------------------------------

    def buyers(self, count: int) -> None:
        """Storefront buyers: most buy once, some come back, a few retry a checkout they did not pay."""
        made = 0
        while made < count:
            contact = self.r.choice((self.phone(), self.phone(), self.phone(), f"{self.r.randrange(10**9)}@qq.com"))
            devices = [self.uid("fp-")] + ([self.uid("fp-")] if self.r.random() < 0.12 else [])
            home_ip = self.ip()
            account = self.uid("alipay-")
            if self.r.random() < 0.04:  # a past refund or dispute this month: one is normal
                self.past.append(Past(self.r.uniform(1, 29), self.r.choice(("refund", "dispute")), contact=contact,
                                      device=devices[0]))
            visits = self.r.choices((1, 2, 3, 4, 6), (78, 14, 5, 2, 1))[0]
            coupon_left = self.r.random() < 0.10
            for _ in range(visits):
                t = self.daytime()
                device = self.r.choice(devices)
                ip = home_ip if self.r.random() < 0.7 else self.ip()
                amount = self.price(SHOP_PRICES)
                quantity = 1
                if amount <= 10000 and self.r.random() < 0.15:
                    quantity = self.r.choice((2, 3, 5))
                    amount *= quantity
                amount = min(amount, 500000)
                coupon = coupon_left and self.r.random() < 0.8
                coupon_left = coupon_left and not coupon
                values = {"is_guest": True, "quantity": quantity, "has_coupon": coupon}
                if coupon:
                    amount = max(100, amount - 500)
                paying = account if self.r.random() < 0.92 else self.uid("wx-")  # sometimes pays another way
                if self.r.random() < 0.05:  # a checkout left unpaid, retried a few minutes later
                    self.add(Ev(t, "shop_checkout", "legit", amount, ip, device, contact, None, values=dict(values)))
                    t += self.r.uniform(40, 400)
                    made += 1
                refund = self.r.uniform(600, 7200) if self.r.random() < 0.01 else None
                self.add(Ev(t, "shop_checkout", "legit", amount, ip, device, contact,
                            paying if self.r.random() < 0.9 else None, values=values,
                            pay_after=self.r.uniform(15, 240), refund_after=refund))
                made += 1
            if self.r.random() < 0.04:  # a household: someone else buys on the same device
                other = self.phone()
                self.add(Ev(self.daytime(), "shop_checkout", "legit", self.price(SHOP_PRICES), home_ip, devices[0],
                            other, self.uid("wx-"), values={"is_guest": True, "quantity": 1}))
                made += 1

    def agent_traffic(self, count: int) -> None:
        """Agents: purchases through the portal and the Open API (some resell in bulk), top-ups, withdrawals."""
        legit = [i for i, a in enumerate(self.agents) if a["kind"] == "legit"]
        weights = [self.weights[i] for i in legit]
        ips = {i: self.ip(0.2) for i in legit}
        withdrawn: set[int] = set()
        for _ in range(count):
            i = self.r.choices(legit, weights)[0]
            a = self.agents[i]
            roll = self.r.random()
            t = self.daytime()
            base = {"account_age_hours": a["age_hours"], "verified_age_hours": a["verified_hours"]}
            if roll < 0.80:
                kind = "openapi_order" if self.r.random() < 0.45 else "portal_purchase"
                self.add(Ev(t, kind, "legit", self.price(AGENT_PRICES), ips[i], None, None, agent=i,
                            values={**base, "quantity": 1}))
            elif roll < 0.93:
                amount = self.r.choice((10000, 20000, 50000, 100000, 200000, 500000))
                if a["age_hours"] < 72:
                    amount = self.r.choice((5000, 10000, 20000, 50000))  # new agents start small
                self.add(Ev(t, "wallet_topup", "legit", amount, ips[i], None, None, agent=i, values=base))
            else:  # earnings, once a day at most, from any agent (small ones earn too)
                i = self.r.choice(legit)
                if i in withdrawn:
                    continue
                withdrawn.add(i)
                a = self.agents[i]
                base = {"account_age_hours": a["age_hours"], "verified_age_hours": a["verified_hours"]}
                self.add(Ev(t, "withdrawal", "legit", self.r.choice((10000, 30000, 50000, 100000, 300000)),
                            ips[i], None, None, agent=i, values={**base, "topup_share": 0.0}))

    def registrations(self, count: int) -> None:
        for _ in range(count):
            self.add(Ev(self.daytime(), "registration", "legit", 0, self.ip(), self.uid("fp-"), self.phone()))

    # --- attacks --------------------------------------------------------------------------------------------

    def card_testing(self, total: int) -> None:
        """One device (and IP) checks stolen payment accounts with small orders: most never pay, some do."""
        while total > 0:
            size = self.campaign(total, 50, 150)
            total -= size
            t, device, ip = self.start(size * 60), self.uid("fp-"), self.ip(0.3)
            for _ in range(size):
                t += self.r.uniform(8, 60)
                paying = self.uid("stolen-") if self.r.random() < 0.35 else None
                self.add(Ev(t, "shop_checkout", "card_testing", self.r.choice((1000, 3000, 5000)), ip, device,
                            self.r.choice((self.phone(), f"{self.r.randrange(10**9)}@qq.com")), paying,
                            values={"is_guest": True, "quantity": 1}, pay_after=self.r.uniform(5, 30)))

    def account_farm(self, total: int) -> None:
        """Agent registrations in bulk from one IP, on one device or a few spoofed ones."""
        while total > 0:
            size = self.campaign(total, 50, 120)
            total -= size
            t, ip = self.start(size * 120), self.ip(0.0)
            devices = [self.uid("fp-") for _ in range(self.r.choice((1, 1, 2, 3)))]
            rotate = self.r.random() < 0.3  # a fresh fingerprint every time
            for _ in range(size):
                t += self.r.uniform(20, 120)
                device = self.uid("fp-") if rotate else self.r.choice(devices)
                self.add(Ev(t, "registration", "account_farm", 0, ip, device, self.phone()))

    def velocity_burst(self, total: int) -> None:
        """A bot (or a taken-over buyer) buying as fast as it can from one contact and device."""
        while total > 0:
            size = self.campaign(total, 50, 150)
            total -= size
            t, device, ip, contact, account = self.start(size * 15), self.uid("fp-"), self.ip(), self.phone(), \
                self.uid("alipay-")
            for _ in range(size):
                t += self.r.uniform(3, 15)
                self.add(Ev(t, "shop_checkout", "velocity_burst", self.price(SHOP_PRICES[:6]), ip, device, contact,
                            account, values={"is_guest": True, "quantity": 1}, pay_after=self.r.uniform(5, 20)))

    def structuring(self, total: int) -> None:
        """Orders just under the per-order limit (¥4,800-¥4,999), spread over two or three contacts and devices
        to stay under the daily limit."""
        while total > 0:
            size = self.campaign(total, 5, 12)
            total -= size
            contacts = [self.phone() for _ in range(self.r.randint(2, 3))]
            devices = [self.uid("fp-") for _ in range(self.r.randint(1, 3))]
            ip = self.ip()
            t = self.start(size * 3600)
            for _ in range(size):
                t += self.r.uniform(120, 3600)
                self.add(Ev(t, "shop_checkout", "structuring", self.r.randint(480_000, 499_900), ip,
                            self.r.choice(devices), self.r.choice(contacts), self.uid("alipay-"),
                            values={"is_guest": True, "quantity": 1}))

    def refund_abuse(self, total: int) -> None:
        """Buyers who order, keep the cards and claim refunds or dispute, again and again, rotating contacts on
        their device; their history this month has two or more."""
        while total > 0:
            size = self.campaign(total, 3, 8)
            total -= size
            device, ip = self.uid("fp-"), self.ip()
            contacts = [self.phone() for _ in range(self.r.randint(1, 3))]
            for _ in range(self.r.randint(2, 6)):
                self.past.append(Past(self.r.uniform(1, 29), self.r.choice(("refund", "refund", "dispute")),
                                      contact=self.r.choice(contacts), device=device))
            for _ in range(size):
                self.add(Ev(self.daytime(), "shop_checkout", "refund_abuse", self.price(SHOP_PRICES[:9]), ip, device,
                            self.r.choice(contacts), self.uid("alipay-"), values={"is_guest": True, "quantity": 1},
                            refund_after=self.r.uniform(300, 3600), dispute=self.r.random() < 0.3))

    def coupon_abuse(self, total: int) -> None:
        """New-buyer coupons redeemed by fresh contacts, from a handful of devices behind one IP."""
        while total > 0:
            size = self.campaign(total, 30, 80)
            total -= size
            t, ip = self.start(size * 180), self.ip(0.0)
            devices = [self.uid("fp-") for _ in range(self.r.randint(1, 3))]
            for _ in range(size):
                t += self.r.uniform(20, 180)
                self.add(Ev(t, "shop_checkout", "coupon_abuse", self.r.choice((1000, 3000, 5000)) - 500, ip,
                            self.r.choice(devices), self.phone(), self.uid("wx-"),
                            values={"is_guest": True, "quantity": 1, "has_coupon": True}))

    def topup_withdraw(self, total: int) -> None:
        """Fresh agents topping up with money from elsewhere and asking for it back as a withdrawal soon after."""
        while total > 0:
            i = len(self.agents)
            age = self.r.uniform(2, 60)
            self.agents.append({"tier": 0, "age_hours": age, "verified_hours": self.r.uniform(0.5, age),
                                "kind": "topup_withdraw"})
            t, ip = self.start(4 * 3600), self.ip()
            base = {"account_age_hours": age, "verified_age_hours": self.agents[i]["verified_hours"]}
            for _ in range(self.r.randint(1, 3)):
                t += self.r.uniform(60, 900)
                self.add(Ev(t, "wallet_topup", "topup_withdraw", self.r.choice((200000, 300000, 500000, 1000000)),
                            ip, None, None, agent=i, values=dict(base)))
                total -= 1
            for _ in range(self.r.randint(1, 2)):
                minutes = self.r.uniform(3, 120)
                t += minutes * 60
                self.add(Ev(t, "withdrawal", "topup_withdraw", self.r.choice((150000, 300000, 500000)), ip, None,
                            None, agent=i, values={**base, "minutes_since_topup": minutes,
                                                   "topup_share": round(self.r.uniform(0.3, 1.0), 2)}))
                total -= 1


def generate(n: int, seed: int = 7, attack_min: int = 60) -> Day:
    """About n business events: 96% legitimate, 4% attacks (each attack at least `attack_min` events, about one
    campaign; smaller only for quick tests)."""
    g = Gen(n, seed)
    per_attack = max(int(n * 0.04 / len(ATTACKS)), attack_min)
    for name in ATTACKS:
        getattr(g, name)(per_attack)
    legit = max(n - len(g.events), n // 2)
    g.buyers(int(legit * 0.62))
    g.agent_traffic(int(legit * 0.33))
    g.registrations(int(legit * 0.05))
    g.events = [e for e in g.events if 0 <= e.t < DAY]
    g.events.sort(key=lambda e: e.t)
    return Day(g.events, g.past, g.agents)


# ---------------------------------------------------------------------------------------------------------------
# The data: products, tiers, agents, lists, rules


EXTRA_RULES = [  # realistic additions an operator makes: watch thresholds far above normal, small scores
    ("ip_order_flood", "shop_checkout,checkout", "orders_ip_10m >= 300", "review", 0, "同一 IP 下单洪峰"),
    ("ip_many_contacts", "shop_checkout,checkout", "contacts_per_ip_24h >= 400", "score", 15, "同一 IP 大量联系方式"),
    ("contact_many_devices", "shop_checkout,checkout", "devices_per_contact_24h >= 5", "score", 20,
     "同一联系方式多设备"),
    ("contact_big_day", "shop_checkout,checkout", "amount_contact_24h >= 1500000", "score", 20, "联系方式当日大额"),
    ("device_big_day", "shop_checkout,checkout", "amount_device_24h >= 1500000", "score", 20, "设备当日大额"),
    ("night_big_guest", "shop_checkout,checkout", "is_guest and hour_local < 5 and amount >= 300000", "score", 20,
     "深夜大额游客订单"),
    ("guest_big_quantity", "shop_checkout,checkout", "is_guest and quantity >= 20", "score", 20, "游客大批量"),
    ("contact_hourly", "shop_checkout,checkout", "orders_contact_1h >= 6", "score", 20, "联系方式小时内多单"),
    ("device_hourly", "shop_checkout,checkout", "orders_device_1h >= 6", "score", 20, "设备小时内多单"),
    ("payment_account_reuse", "shop_checkout,checkout", "payment_accounts_per_contact_24h >= 4", "score", 25,
     "联系方式使用多个支付账号"),
    ("agent_day_volume", "portal_purchase,openapi_order", "amount_agent_24h >= 50000000", "score", 20,
     "代理当日采购额异常"),
    ("agent_hourly_burst", "portal_purchase,openapi_order", "orders_agent_1h >= 400", "review", 0,
     "代理小时采购异常"),
    ("agent_refunds_week", "portal_purchase,openapi_order", "refunds_agent_30d >= 20", "score", 20, "代理退款多"),
    ("agent_disputes", "portal_purchase,openapi_order", "disputes_agent_30d >= 3", "score", 25, "代理维权多"),
    ("agent_night_big", "portal_purchase,openapi_order", "hour_local < 5 and amount >= 1000000", "score", 15,
     "代理深夜大额"),
    ("new_agent_volume", "portal_purchase,openapi_order", "account_age_hours < 24 and orders_agent_1h >= 30",
     "review", 0, "新代理高频采购"),
    ("topup_many", "wallet_topup", "topups_agent_24h >= 8", "score", 20, "代理当日多次充值"),
    ("topup_big_day", "wallet_topup", "topup_amount_agent_24h >= 5000000", "score", 20, "代理当日充值额大"),
    ("topup_night_big", "wallet_topup", "hour_local < 5 and amount >= 1000000", "score", 15, "深夜大额充值"),
    ("withdraw_many", "withdrawal", "withdrawals_agent_24h >= 3", "score", 25, "当日多次提现"),
    ("withdraw_big_new", "withdrawal", "account_age_hours < 720 and amount >= 2000000", "score", 25,
     "新代理大额提现"),
    ("withdraw_night", "withdrawal", "hour_local < 5 and amount >= 500000", "score", 15, "深夜提现"),
    ("registration_ip_day", "registration", "registrations_ip_1h >= 30", "score", 20, "同一 IP 注册多"),
    ("registration_night", "registration", "hour_local < 5 and registrations_ip_1h >= 2", "score", 15,
     "深夜同 IP 注册"),
    ("login_failures_ip", "login", "logins_failed_ip_1h >= 8", "score", 25, "登录失败多"),
    ("payment_many_accounts_contact", "payment", "payment_accounts_per_contact_24h >= 5", "score", 25,
     "联系方式多个支付账号"),
    ("payment_big", "payment", "amount >= 490000", "score", 10, "大额支付"),
    ("shop_device_refunds", "shop_checkout,checkout", "refunds_contact_30d >= 1 and amount >= 200000", "score", 20,
     "有退款记录的大额订单"),
    ("shop_failed_payments", "shop_checkout,checkout", "payment_failures_device_1h >= 2", "score", 20,
     "设备支付失败"),
    ("shop_ip_failed", "shop_checkout,checkout", "orders_ip_1h >= 1000", "review", 0, "同一 IP 小时订单洪峰"),
    ("shop_coupon_ip_day", "shop_checkout,checkout", "has_coupon and contacts_per_ip_24h >= 300", "score", 10,
     "优惠券 IP 聚集"),
    ("agent_near_order_limit", "portal_purchase,openapi_order",
     "order_limit > 0 and amount >= order_limit * 0.95 and orders_agent_10m >= 3", "score", 25, "代理贴限额多单"),
    ("agent_refunds_30d_big", "portal_purchase,openapi_order", "refunds_agent_30d >= 10 and amount >= 500000",
     "score", 20, "代理退款多且大额"),
    ("checkout_contact_refund_device", "shop_checkout,checkout", "disputes_contact_30d >= 2", "score", 25,
     "联系方式多次维权"),
    ("registration_device_week", "registration", "registrations_device_24h >= 5", "block", 0, "设备批量注册"),
    ("withdraw_unverified", "withdrawal", "verified_age_hours >= 1000000 and amount >= 1000000", "score", 20,
     "未实名大额提现"),
]


def build_data(day: Day, active_rules: int = 50, prefix: str = "bench", with_lists: bool = True) -> dict:
    """Products, tiers, the day's agents, a few list entries and the rules (the defaults, plus generated extras up
    to `active_rules` active ones); returns what the runner needs. Names start with `prefix`."""
    from app.agents import service as agents
    from app.agents.models import Tier
    from app.catalog import service as catalog
    from app.catalog.models import Category, Product
    from app.extensions import db
    from app.ledger import service as ledger
    from app.risk import lists
    from app.risk.default_rules import install_defaults, version_of
    from app.risk.models import RiskRule

    ledger.ensure_platform_accounts()
    tiers = []
    for name, rank, discount, per_order, per_day in TIERS:
        tier = Tier(name=f"{prefix}-{name}", rank=rank, discount_bp=discount, may_recruit=True, may_withdraw=True,
                    min_withdrawal=10000, withdrawal_fee_bp=0, direct_commission_bp=0, indirect_commission_bp=0,
                    daily_limit=0, settle_days=1, risk_order_limit=per_order, risk_daily_limit=per_day)
        db.session.add(tier)
        tiers.append(tier)
    category = Category(name=f"{prefix}-风控点卡")
    db.session.add(category)
    db.session.flush()
    supplier = catalog.platform_supplier()
    product = Product(name=f"{prefix} 风控 通用点卡", category_id=category.id, supplier_id=supplier.id, kind="card",
                      face_price=1000, cost=900, max_per_order=50, low_stock_threshold=1)
    db.session.add(product)
    db.session.flush()
    agent_rows = []
    for i, spec in enumerate(day.agents):
        agent = agents.create_agent(f"risk{prefix}{i:04d}", tiers[spec["tier"]].id, None)
        agent_rows.append({"id": agent.id, "login": agent.name, "tier_id": tiers[spec["tier"]].id})
    db.session.commit()
    # The lists an operator has built up: some blocked devices and phones, a hosting range on the watch list.
    r = random.Random(3)
    for n in range(150 if with_lists else 0):
        lists.add("device", f"fp-blocked-{n}", "block", "历史盗刷设备")
    for _ in range(150 if with_lists else 0):
        lists.add("phone", f"170{r.randrange(10 ** 8):08d}", "block", "历史欺诈号码")
    if with_lists:
        lists.add("cidr", "45.76.0.0/16", "review", "云主机网段")
        lists.add("cidr", "149.28.0.0/16", "review", "云主机网段")
    db.session.commit()
    install_defaults()
    have = db.session.query(RiskRule).filter(RiskRule.status == "active").count()
    for name, events, expression, action, score, reason in EXTRA_RULES[:max(0, active_rules - have)]:
        rule = RiskRule(name=f"x_{name}", events=events, expression=expression, action=action, score=score,
                        reason=reason, status="active", version=1)
        db.session.add(rule)
        db.session.flush()
        db.session.add(version_of(rule))
    db.session.commit()
    active = db.session.query(RiskRule).filter(RiskRule.status == "active").count()
    return {"product": product, "agents": agent_rows, "active_rules": active}


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Outcome:
    label: str
    kind: str
    outcome: str = "allow"
    hits: tuple = ()
    decisions: list = field(default_factory=list)  # (decision id, time) of its checkout and payment decisions


RANK = {"allow": 0, "review": 1, "block": 2}


def run(day: Day, data: dict, day_start: datetime | None = None, on_decision=None, order_prefix: str = "RB") -> dict:
    """Every event of the day through evaluate, in time order, recording what happened; returns the figures."""
    from sqlalchemy import insert

    from app import states
    from app.clock import business_day_start, utcnow
    from app.crypto import pii_hash
    from app.extensions import db
    from app.orders.models import Order
    from app.orders.service import ORDER_STATES
    from app.risk import counters, usage
    from app.risk import service as risk

    day_start = day_start or business_day_start(utcnow()) - timedelta(days=1)
    product = data["product"]
    agents = data["agents"]
    at = lambda seconds: day_start + timedelta(seconds=seconds)  # noqa: E731

    for p in day.past:  # the month before: refunds, disputes
        keys = risk.keys_of(risk.RiskInput(event="history", contact=p.contact, device=p.device, ip=p.ip,
                                           agent_id=agents[p.agent]["id"] if p.agent is not None else None))
        counters.record(p.metric, keys, 0, at=day_start - timedelta(days=p.days_ago))
    db.session.commit()

    queue: list = []
    for n, ev in enumerate(day.events):
        heapq.heappush(queue, (ev.t, n, "event", ev, None))
    seq = len(day.events)
    results: list[Outcome] = []
    latencies: list[float] = []
    last_topup: dict[int, float] = {}
    order_seq = 0

    def decide(event, when, result):
        t0 = time.perf_counter()
        decision = risk.evaluate(event, now=when)
        latencies.append(time.perf_counter() - t0)
        result.decisions.append((decision.id, when))
        if on_decision:
            on_decision(decision)
        return decision

    while queue:
        t, _, what, ev, ref = heapq.heappop(queue)
        now = at(t)
        if what == "pay":
            result, order_id, order_key, order_no = ref
            event = risk.RiskInput(event="payment", amount=ev.amount, payment_account=ev.payment_account,
                                   order_no=order_no, values={"is_guest": True}, counts_when_blocked=True)
            decision = decide(event, now, result)
            keys = risk.keys_of(event)
            held = decision.outcome != "allow" or result.outcome != "allow"
            counters.record("payment", {"payment_account": keys["payment_account"], "device": order_key["device"],
                                        "contact": order_key["contact"]}, ev.amount, at=now)
            states.move(ORDER_STATES, order_id, "pending_payment", "paid", paid_at=now,
                        payment_account_key=keys["payment_account"])
            if held:
                states.move(ORDER_STATES, order_id, "paid", "reviewing")
            if decision.outcome != "allow" and result.outcome == "allow":
                result.outcome = "review"  # money came in: held, never silently refused
                result.hits += tuple(f"payment:{h['name']}" for h in decision.hits if not h.get("shadow"))
            if ev.refund_after is not None and not held:
                seq += 1
                heapq.heappush(queue, (t + ev.refund_after, seq, "refund", ev, (order_id, order_key)))
            db.session.commit()
            continue
        if what == "refund":
            order_id, order_key = ref
            row = states.move(ORDER_STATES, order_id, "paid", "refunded", returning=(
                "amount", "agent_id", "buyer_key", "device_key", "payment_account_key", "created_at", "paid_at"))
            usage.release(order_id, row.amount, usage.order_identifiers(*row[1:]))  # as orders.transition does
            counters.record("dispute" if ev.dispute else "refund", order_key, ev.amount, at=now)
            db.session.commit()
            continue

        result = Outcome(ev.label, ev.kind)
        results.append(result)
        agent = agents[ev.agent] if ev.agent is not None else None
        values = dict(ev.values)
        if ev.kind == "withdrawal" and "minutes_since_topup" not in values and ev.agent in last_topup:
            values["minutes_since_topup"] = max(0.0, (t - last_topup[ev.agent]) / 60)
        event = risk.RiskInput(event=ev.kind, amount=ev.amount, ip=ev.ip, device=ev.device, contact=ev.contact,
                               phone=ev.contact if ev.kind == "registration" else None,
                               agent_id=agent["id"] if agent else None, agent_login=agent["login"] if agent else None,
                               tier_id=agent["tier_id"] if agent and ev.kind in ("portal_purchase", "openapi_order")
                               else None, values=values,
                               enforce_limits=ev.kind in ("shop_checkout", "portal_purchase", "openapi_order"))
        decision = decide(event, now, result)
        result.outcome = decision.outcome
        result.hits = tuple(h["name"] for h in decision.hits if not h.get("shadow") and h.get("action") != "score")
        if decision.outcome == "block":
            db.session.rollback()  # nothing is created (the limit's reservation goes with it)
            continue
        keys = risk.keys_of(event)
        if ev.kind in ("shop_checkout", "portal_purchase", "openapi_order"):
            order_seq += 1
            order_no = f"{order_prefix}{order_seq:010d}"
            guest = agent is None
            order_id = db.session.execute(insert(Order).values(
                order_no=order_no, agent_id=None if guest else agent["id"], tier_id=None if guest else
                agent["tier_id"], product_id=product.id, supplier_id=product.supplier_id, quantity=1,
                face_price=ev.amount, unit_price=ev.amount, amount=ev.amount, cost_total=ev.amount * 9 // 10,
                service_fee=0, status="pending_payment" if guest else "paid",
                channel="sandbox" if guest else "wallet", contact=ev.contact, contact_hash=pii_hash(ev.contact),
                buyer_key=keys["contact"],
                device_key=keys["device"], risk_decision_id=decision.id, risk_hold=decision.outcome == "review",
                created_at=now, updated_at=now).returning(Order.id)).scalar()
            risk.attach_order(decision.id, order_no)
            counters.record("order", keys, ev.amount, at=now)
            if ev.values.get("has_coupon"):
                counters.record("coupon_order", keys, ev.amount, at=now)
            if guest and ev.payment_account:
                seq += 1
                heapq.heappush(queue, (t + ev.pay_after, seq, "pay", ev,
                                       (result, order_id, {"contact": keys["contact"], "device": keys["device"]},
                                        order_no)))
        elif ev.kind == "wallet_topup":
            counters.record("topup", keys, ev.amount, at=now)
            last_topup[ev.agent] = t
        elif ev.kind == "withdrawal":
            counters.record("withdrawal", keys, ev.amount, at=now)
        elif ev.kind == "registration":
            counters.record("registration", keys, 0, at=now)
        db.session.commit()
    return {"results": results, "latencies": latencies}


def figures(results: list[Outcome]) -> dict:
    """Per attack: events, reviewed, blocked, recall; legitimate: events, reviewed and blocked shares."""
    by = defaultdict(Counter)
    why = Counter()
    for r in results:
        by[r.label][r.outcome] += 1
        if r.label == "legit" and r.outcome != "allow":
            why.update(f"{r.outcome}:{name}" for name in r.hits or ("score",))
    out = {}
    for label, c in by.items():
        total = sum(c.values())
        out[label] = {"events": total, "review": c["review"], "block": c["block"],
                      "flagged": (c["review"] + c["block"]) / total if total else 0.0}
    if "legit" in out:
        out["legit"]["why"] = why
    return out


def label(results: list[Outcome]) -> int:
    """Every decision of the run labelled with the generator's ground truth (legit 0, any attack 1), as if each had
    been reviewed; the caller commits. Returns how many."""
    from app.risk.learning import label_store

    n = 0
    for result in results:
        value = label_store.LEGIT if result.label == "legit" else label_store.FRAUD
        for decision_id, at in result.decisions:
            if decision_id is None:
                continue
            label_store.record(f"decision:{decision_id}", value, "synthetic", at, decision_id, None, at)
            n += 1
    return n


def load_history(events: int = 2000, seed: int = 7, attack_min: int = 20, prefix: str = "样本",
                 active_rules: int = 0, day_start: datetime | None = None, with_lists: bool = True,
                 order_prefix: str = "RS") -> dict:
    """A labelled synthetic day through evaluate: its data, its decisions, and a label on each. Commits.
    Returns {"events", "decisions", "labels", "results", "latencies"}."""
    from app.extensions import db

    day = generate(events, seed, attack_min)
    data = build_data(day, active_rules, prefix=prefix, with_lists=with_lists)
    out = run(day, data, day_start, order_prefix=order_prefix)
    labels = label(out["results"])
    db.session.commit()
    return {"events": len(out["results"]), "decisions": len(out["latencies"]), "labels": labels, **out}

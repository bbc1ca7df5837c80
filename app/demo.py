"""Demo data: staff logins, the agent tree 总代 → 区域代理 → 普通代理 → 会员, products and card stock."""
# i18n-keep-file: demo data (names, notices, memos) stored in the database as an operator would type it
from __future__ import annotations

import secrets as pyrandom

from flask import current_app
from sqlalchemy import select

from app.agents import service as agents
from app.agents.models import Agent, Tier
from app.catalog import cards
from app.catalog import service as catalog
from app.catalog.models import Category, Product, Supplier
from app.errors import KamengError
from app.extensions import db
from app.ledger import service as ledger

TIERS = [
    # name, rank, discount_bp, may_recruit, may_withdraw, direct bp, indirect bp, daily limit fen, settle days,
    # may open a shop (分站)
    ("总代", 40, 9000, True, True, 300, 100, 0, 1, True),
    ("区域代理", 30, 9300, True, True, 200, 50, 0, 1, True),
    ("普通代理", 20, 9600, False, True, 0, 0, 5_000_000, 7, True),
    ("会员", 10, 9900, False, False, 0, 0, 1_000_000, 7, False),
]
CATEGORIES = ["游戏点卡", "话费充值", "视频会员"]
PRODUCTS = [
    # name, category, kind, face fen, cost fen, secrets
    ("腾讯Q币 100元卡", "游戏点卡", "card", 10000, 8800, 60),
    ("网易一卡通 50元", "游戏点卡", "card", 5000, 4400, 60),
    ("爱奇艺黄金会员月卡", "视频会员", "card", 2500, 1800, 300),  # enough for a 200-card order (批量提卡)
    ("王者荣耀 点券直充 60元", "游戏点卡", "direct", 6000, 5400, 0),
    ("中国移动话费 100元 直充", "话费充值", "direct", 10000, 9700, 0),
    ("腾讯视频VIP年卡（人工发货）", "视频会员", "manual", 17800, 15000, 0),
]
CARD_MAX_PER_ORDER = 500  # resellers buy card secrets in bulk (批量提卡); other kinds stay at 10
# A reusable card product (循环卡密): each of its secrets is sold to up to max_uses orders.
REUSABLE_PRODUCTS = [
    # name, category, face fen, cost fen, secrets, max_uses
    ("王者荣耀 新手攻略视频 下载码（循环卡密）", "游戏点卡", 990, 0, 10, 100),
]
# Direct products and their codes at the demo's upstream simulator (`flask kameng supplier-sim`): code, cost fen
DEMO_UPSTREAM = {"王者荣耀 点券直充 60元": ("WZRY-60", 5450), "中国移动话费 100元 直充": ("CMCC-100", 9850)}
DEMO_SUPPLIER = "模拟上游（演示）"
# The demo's agent shops (分站), one per theme: agent, name, theme, markup bp, buyer contact, notice
SHOPS = [("agent1", "一号玩家点卡铺", "game", 800, "QQ 800100100", "点卡秒发，24 小时自动发货；大额批发请联系店主。"),
         ("agent2", "校园生活小站", "campus", 1000, "微信 campus-shop", "开学季视频会员特惠，宿舍直送不用等。"),
         ("agent3", "小三的数码卡券店", "general", 1200, "手机 13800000003", None)]
STAFF = [("admin", "Admin"), ("manager", "Manager"), ("finance", "Finance"), ("support", "Support")]
AGENTS = [("agent1", "总代", None), ("agent2", "区域代理", "agent1"), ("agent3", "普通代理", "agent2"),
          ("member1", "会员", "agent3")]
START_BALANCE = 2_000_000  # ¥20,000


def _user(username: str, role_name: str, password: str):
    sm = current_app.appbuilder.sm
    user = sm.find_user(username=username)
    role = sm.find_role(role_name)
    if role is None:
        raise KamengError(f"role {role_name} is missing: start the app once with FAB_CREATE_DB=True")
    if user is None:
        user = sm.add_user(username, username, "demo", f"{username}@kameng.local", role, password)
        if not user:
            raise KamengError(f"could not create user {username}")
    else:
        sm.reset_password(user.id, password)
    return user


def load_demo(password: str | None = None) -> list[tuple[str, str, str]]:
    """Idempotent: running it again resets passwords and tops nothing up twice."""
    password = password or pyrandom.token_urlsafe(9)
    if len(password) < 6:
        raise KamengError("password must be at least 6 characters")
    current_app.appbuilder.sm.create_db()  # built-in roles
    ledger.ensure_platform_accounts()
    logins = []
    for username, role in STAFF:
        _user(username, role, password)
        logins.append((username, password, role))

    tiers = {}
    for name, rank, disc, recruit, withdraw, direct, indirect, limit, settle, shop in TIERS:
        tier = db.session.scalar(select(Tier).where(Tier.name == name))
        if tier is None:
            tier = Tier(name=name, rank=rank, discount_bp=disc, may_recruit=recruit, may_withdraw=withdraw,
                        min_withdrawal=10000, withdrawal_fee_bp=60, direct_commission_bp=direct,
                        indirect_commission_bp=indirect, daily_limit=limit, settle_days=settle, may_open_shop=shop)
            db.session.add(tier)
            db.session.flush()
        tiers[name] = tier

    by_name: dict[str, Agent] = {}
    for username, tier_name, parent in AGENTS:
        user = _user(username, "Agent", password)
        agent = db.session.scalar(select(Agent).where(Agent.user_id == user.id))
        if agent is None:
            agent = agents.create_agent(username, tiers[tier_name].id,
                                        by_name[parent].id if parent else None, user_id=user.id)
            ledger.post_journal(f"demo:topup:{agent.id}", "adjustment", [
                ledger.Line(ledger.agent_account_code(agent.id, "wallet"), START_BALANCE),
                ledger.Line("platform:adjustments", -START_BALANCE)], memo="演示数据初始余额")
        by_name[username] = agent
        logins.append((username, password, f"Agent · {tier_name}"))

    supplier = catalog.platform_supplier()
    categories = {}
    for order, name in enumerate(CATEGORIES):
        cat = db.session.scalar(select(Category).where(Category.name == name))
        if cat is None:
            cat = Category(name=name, sort_order=order)
            db.session.add(cat)
            db.session.flush()
        categories[name] = cat
    db.session.commit()

    catalogue = [(name, cat, kind, face, cost, count, None) for name, cat, kind, face, cost, count in PRODUCTS]
    catalogue += [(name, cat, "card", face, cost, count, uses)
                  for name, cat, face, cost, count, uses in REUSABLE_PRODUCTS]
    for name, cat, kind, face, cost, count, max_uses in catalogue:
        product = db.session.scalar(select(Product).where(Product.name == name))
        if product is None:
            product = Product(name=name, category_id=categories[cat].id, supplier_id=supplier.id, kind=kind,
                              face_price=face, cost=cost, low_stock_threshold=10,
                              max_per_order=CARD_MAX_PER_ORDER if kind == "card" else 10,
                              reusable=max_uses is not None, max_uses=max_uses)
            db.session.add(product)
            db.session.commit()
        elif kind == "card" and product.max_per_order < CARD_MAX_PER_ORDER:
            product.max_per_order = CARD_MAX_PER_ORDER  # a demo loaded before bulk extraction
            db.session.commit()
        stock = cards.available_counts([product.id]).get(product.id, 0) // (max_uses or 1)
        if count and stock < count:
            lines = "\n".join(f"DEMO{product.id:02d}-{pyrandom.token_hex(6).upper()} "
                              f"{pyrandom.randbelow(10 ** 8):08d}" for _ in range(count - stock))
            batch = cards.create_import(product.id, lines, None, "demo")
            cards.run_import(batch.id)
    db.session.commit()
    _demo_shops(by_name)
    _demo_announcements()
    return logins


def _demo_shops(agents: dict[str, Agent]) -> None:
    """Each demo shop once (an agent whose tier may open one), its first products featured on the price list."""
    from app.agentshops import service as shops

    card_products = list(db.session.scalars(select(Product.id).where(Product.kind.in_(("card", "direct")))
                                            .order_by(Product.id)))
    for username, name, theme, markup, contact, notice in SHOPS:
        agent = agents[username]
        if shops.shop_of(agent.id) is not None or shops.open_refusal(agent) is not None:
            continue
        low, high = shops.markup_bounds()
        shop = shops.open_shop(agent.id, name, min(max(markup, low), high), theme, notice, contact)
        shops.set_products(shop.id, agent.id, [shops.ProductSetting(pid, "", False, True)
                                               for pid in card_products[:5]])


def demo_shops() -> list[tuple[str, str]]:
    """(agent login, shop path) of the demo's shops, for the demo command to print."""
    from flask_appbuilder.security.sqla.models import User

    from app.agentshops.models import AgentShop

    return [(login, f"/s/{code}/") for login, code in db.session.execute(
        select(User.username, AgentShop.code).join(Agent, Agent.user_id == User.id)
        .join(AgentShop, AgentShop.agent_id == Agent.id).order_by(AgentShop.id)).all()]


def connect_demo_supplier(url: str, key: str, app_key: str = "kameng-demo") -> Supplier:
    """The demo's direct products (直充) come from the upstream simulator at `url`, signed with `key`. Idempotent."""
    from app import crypto
    from app.suppliers.models import SupplierProduct

    supplier = db.session.scalar(select(Supplier).where(Supplier.name == DEMO_SUPPLIER))
    if supplier is None:
        supplier = catalog.create_supplier(DEMO_SUPPLIER, service_fee_bp=100)
    supplier.protocol, supplier.endpoint, supplier.app_key = "simulator", url.rstrip("/"), app_key
    supplier.secret_enc = crypto.encrypt(key)
    supplier.timeout_seconds, supplier.low_balance_threshold = 10, 100_000
    for name, (code, cost) in DEMO_UPSTREAM.items():
        product = db.session.scalar(select(Product).where(Product.name == name))
        if product is None:
            continue
        mapping = db.session.scalar(select(SupplierProduct).where(SupplierProduct.supplier_id == supplier.id,
                                                                  SupplierProduct.product_id == product.id))
        if mapping is None:
            db.session.add(SupplierProduct(supplier_id=supplier.id, product_id=product.id, upstream_code=code,
                                           cost=cost, priority=100, active=True))
    db.session.commit()
    return supplier


DEMO_ANNOUNCEMENTS = (
    ("春节期间正常发货", "卡密即时到账；直充 1 分钟内到账，超过 10 分钟未到账将自动改派或退款。", "agents", True),
    ("新代理等级政策", "区域代理直推佣金上调至 5%，详情见代理等级。", "agents", False),
    ("今晚 23:00 上游维护", "中国移动话费直充 23:00-23:30 可能变慢，超时订单会自动改派，请留意到账超时队列。",
     "staff", True),
)


def _demo_announcements() -> None:
    """Notices (公告) on the agents' and staff's home pages; added once (by title)."""
    from app.announcements.models import Announcement

    for title, body, audience, pinned in DEMO_ANNOUNCEMENTS:
        if db.session.scalar(select(Announcement.id).where(Announcement.title == title)) is None:
            db.session.add(Announcement(title=title, body=body, audience=audience, pinned=pinned))
    db.session.commit()

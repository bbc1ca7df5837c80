"""Agent shops (分站): the rules. The only code that changes a shop, its products' settings or its domain.

- Who: an agent whose tier has `may_open_shop` opens one shop (portal or `flask kameng shop create`).
- Prices: a product's shop price is the agent's own price now (app.catalog.service.price_for with its tier, time
  rules included) raised by the product's markup, else the shop's, in basis points (app.money.apply_rate, the one
  rounding rule). A markup below 0 would sell under the agent's own price and is refused; one outside the admin's
  bounds (平台设置, app.settings.service.shop_markup_bounds) is refused when set and clamped into them when read
  (an admin may narrow the bounds after agents chose their markups).
- Checkout: `pricing()` is the only way to a ShopPricing, and it refuses a closed shop (suspended, or its agent
  disabled, held by risk control or on a tier that may no longer open a shop). The storefront's own checkout
  (app.payments.service.checkout -> app.orders.service.place_guest_order) prices the order with it and snapshots
  the shop, the agent's price and the profit: same order service, same risk decision, same payment.
- Money: when a shop order is delivered (any delivery path: app.network.commissions.accrue_for_delivered), the
  agent earns shop price - its price as shop profit: a level-0 commission row (settled
  T+N, frozen by a dispute and reversed on refund exactly like a commission, receivable rule included) and the
  journal `shopprofit:<order_no>` (platform:shop_profit_expense -> agent:<id>:pending). Its uplines earn their
  commissions on the agent's price, as on any purchase by it.
- Custom domains: requested by the agent, approved or rejected by an admin (audited); app.agentshops.hosts serves
  a request whose Host is an approved domain as that shop.
"""
from __future__ import annotations

import io
import re
import secrets
import time
from dataclasses import dataclass, field

from flask import current_app
from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from app import states
from app.agents.models import Agent, Tier
from app.agentshops.errors import (
    DomainTaken,
    InvalidDomain,
    MarkupOutOfBounds,
    ShopClosed,
    ShopExists,
    ShopNotAllowed,
    ShopNotFound,
)
from app.agentshops.models import DOMAIN_STATES, SHOP_STATES, THEMES, AgentShop, AgentShopDomain, AgentShopProduct
from app.audit import service as audit
from app.catalog.errors import ProductUnavailable
from app.catalog.models import Category, Product
from app.catalog.service import price_for, stock_levels
from app.clock import utcnow
from app.errors import Forbidden, NotFound, ValidationError
from app.extensions import db
from app.money import apply_rate, format_bp
from app.network import commissions
from app.network.models import Commission
from app.settings import service as settings

CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: codes are read off posters
CODE_LENGTH = 6
CODE_PATTERN = re.compile(r"^[a-z0-9]{4,16}$")
_PERCENT = re.compile(r"^(-)?(\d{1,4})(?:\.(\d{1,2}))?$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_NOTICE = 1000
MAX_LOGO_BYTES = 1024 * 1024
LOGO_SIDE = 256
# Orders that count for a shop's GMV and profit: delivered, or delivered and disputed (as the analytics rollups).
COUNTED = ("delivered", "disputed")


# --- reading ---------------------------------------------------------------------------------------------------

def by_code(code: object) -> AgentShop:
    """The shop of /s/<code>/, open or closed; ShopNotFound for anything else."""
    if not isinstance(code, str) or not CODE_PATTERN.match(code):
        raise ShopNotFound(_("分站不存在"))
    shop = db.session.scalar(select(AgentShop).where(AgentShop.code == code)
                             .options(joinedload(AgentShop.agent).joinedload(Agent.tier)))
    if shop is None:
        raise ShopNotFound(_("分站不存在"))
    return shop


def shop_of(agent_id: int) -> AgentShop | None:
    return db.session.scalar(select(AgentShop).where(AgentShop.agent_id == agent_id))


def closed_reason(shop: AgentShop) -> str | None:
    """Why the shop does not sell now (shown to its agent; buyers only read "shop closed"), or None when it does."""
    agent = shop.agent
    if shop.status == "suspended":
        return _("分站已被平台暂停")
    if not agent.active:
        return _("代理账号已停用")
    if agent.risk_hold:
        return _("代理账号在风控审核中")
    if not agent.tier.may_open_shop:
        return _("当前等级「%(name)s」不能开设分站", name=agent.tier.name)
    return None


def open_by_code(code: object) -> AgentShop:
    """The shop of /s/<code>/ if it sells now: ShopNotFound, or ShopClosed ("shop closed")."""
    shop = by_code(code)
    if closed_reason(shop) is not None:
        raise ShopClosed(_("本店暂停营业"))
    return shop


def markup_bounds() -> tuple[int, int]:
    return settings.shop_markup_bounds()


def clamp(markup_bp: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return max(low, min(high, markup_bp))


@dataclass(frozen=True)
class ShopPrice:
    unit_price: int  # the shop's price of one unit
    base_unit_price: int  # the agent's own price of one unit
    markup_bp: int  # the markup that made it (after the admin's bounds)


@dataclass(frozen=True)
class ShopPricing:
    """A shop that sells now, with what pricing its products needs: what the storefront's order service takes
    (app.orders.service.place_guest_order(shop=...)) to price an order and snapshot it."""
    shop_id: int
    agent_id: int
    agent_path: str
    tier: Tier
    markup_bp: int
    bounds: tuple[int, int]
    overrides: dict[int, tuple[int | None, bool]] = field(default_factory=dict)  # product -> (markup, hidden)

    def hidden(self) -> set[int]:
        return {pid for pid, (_markup, hidden) in self.overrides.items() if hidden}

    def markup_for(self, product_id: int) -> int:
        own = self.overrides.get(product_id, (None, False))[0]
        return clamp(self.markup_bp if own is None else own, self.bounds)

    def price(self, product: Product) -> ShopPrice:
        """The shop's price of a product it sells; ProductUnavailable for one it hides."""
        if self.overrides.get(product.id, (None, False))[1]:
            raise ProductUnavailable(_("商品不存在或已下架"))
        base = price_for(self.tier, product)
        markup = self.markup_for(product.id)
        return ShopPrice(base + apply_rate(base, markup), base, markup)


def pricing(shop: AgentShop) -> ShopPricing:
    """The shop's pricing; ShopClosed when it does not sell now."""
    if closed_reason(shop) is not None:
        raise ShopClosed(_("本店暂停营业"))
    rows = db.session.execute(select(AgentShopProduct.product_id, AgentShopProduct.markup_bp,
                                     AgentShopProduct.hidden).where(AgentShopProduct.shop_id == shop.id)).all()
    return ShopPricing(shop.id, shop.agent_id, shop.agent.path, shop.agent.tier, shop.markup_bp, markup_bounds(),
                       {r.product_id: (r.markup_bp, r.hidden) for r in rows})


def offers(shop: AgentShop) -> list[dict]:
    """The shop's catalogue, shaped exactly as the storefront's (GET /shop/api/products), at the shop's prices."""
    from app.portal.service import public_offers

    prices = pricing(shop)
    return public_offers(price_of=lambda product: prices.price(product).unit_price, exclude=prices.hidden())


@dataclass(frozen=True)
class ProductRow:
    """One line of the agent's pricing table (portal)."""
    product_id: int
    name: str
    category: str
    kind: str
    my_price: int
    own_markup_bp: int | None  # this product's markup, None: the shop's
    markup_bp: int  # what applies now (bounds included)
    shop_price: int
    hidden: bool
    featured: bool
    in_stock: bool


def product_rows(shop: AgentShop) -> list[ProductRow]:
    """Every product a shop may sell (card and direct, on sale), hidden ones included, with its prices."""
    products = db.session.execute(
        select(Product, Category.name).join(Category, Category.id == Product.category_id)
        .where(Product.active.is_(True), Category.active.is_(True), Product.kind.in_(("card", "direct")))
        .order_by(Category.sort_order, Product.id)).all()
    settings_of = {r.product_id: r for r in db.session.scalars(
        select(AgentShopProduct).where(AgentShopProduct.shop_id == shop.id))}
    levels = stock_levels(p for p, _ in products)
    bounds = markup_bounds()
    rows = []
    for product, category in products:
        own = settings_of.get(product.id)
        own_markup = own.markup_bp if own else None
        markup = clamp(shop.markup_bp if own_markup is None else own_markup, bounds)
        base = price_for(shop.agent.tier, product)
        rows.append(ProductRow(product.id, product.name, category, product.kind, base, own_markup, markup,
                               base + apply_rate(base, markup), bool(own and own.hidden), bool(own and own.featured),
                               levels[product.id].in_stock))
    return rows


def featured_rows(shop: AgentShop) -> list[ProductRow]:
    """The price list's products: the featured ones the shop sells; none featured: the first 12 it sells."""
    visible = [r for r in product_rows(shop) if not r.hidden]
    featured = [r for r in visible if r.featured]
    return (featured or visible)[:12]


def totals(shop: AgentShop) -> dict:
    """What the portal shows: the shop's counted orders, GMV and profit (from the rollups, as the dashboards), and
    its profit by commission status (pending, frozen, settled, reversed)."""
    from app.analytics.models import ShopDaily

    row = db.session.execute(select(func.coalesce(func.sum(ShopDaily.orders), 0),
                                    func.coalesce(func.sum(ShopDaily.gmv), 0),
                                    func.coalesce(func.sum(ShopDaily.profit), 0))
                             .where(ShopDaily.scope_id == shop.agent_id, ShopDaily.shop_id == shop.id)).one()
    by_status = dict.fromkeys(("pending", "frozen", "settled", "reversed"), 0)
    by_status.update({status: int(amount) for status, amount in db.session.execute(
        select(Commission.status, func.sum(Commission.amount)).where(
            Commission.agent_id == shop.agent_id, Commission.level == commissions.SHOP_PROFIT_LEVEL)
        .group_by(Commission.status))})
    return {"orders": int(row[0]), "gmv": int(row[1]), "profit": int(row[2]), "profit_by_status": by_status}


# --- input -----------------------------------------------------------------------------------------------------

def parse_markup(value: object) -> int | None:
    """A markup as the agent types it, in percent ('12', '12.5', '12.5%', '-3') -> basis points; '' -> None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().rstrip("%").strip()
    if text == "":
        return None
    match = _PERCENT.match(text)
    if not match:
        raise MarkupOutOfBounds(_("加价比例格式不正确：%(value)s（例如 10 或 12.5）", value=repr(str(value)[:16])))
    sign, whole, frac = match.groups()
    bp = int(whole) * 100 + int((frac or "0").ljust(2, "0"))
    return -bp if sign else bp


def check_markup(markup_bp: int, bounds: tuple[int, int] | None = None, what: str = "") -> int:
    """A markup an agent sets: never below its own price (negative), within the admin's bounds."""
    low, high = bounds or markup_bounds()
    prefix = f"{what}：" if what else ""
    if markup_bp < 0:
        raise MarkupOutOfBounds(_("%(prefix)s分站售价不能低于您的拿货价（加价不能为负）", prefix=prefix))
    if not low <= markup_bp <= high:
        raise MarkupOutOfBounds(_("%(prefix)s加价比例须在 %(low)s 到 %(high)s 之间", prefix=prefix,
                                  low=format_bp(low), high=format_bp(high)))
    return markup_bp


def _text(value: object, what: str, max_len: int, required: bool = False) -> str | None:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(_("%(what)s格式不正确", what=what))
    value = value.strip()
    if not value:
        if required:
            raise ValidationError(_("请填写%(what)s", what=what))
        return None
    if len(value) > max_len:
        raise ValidationError(_("%(what)s最多 %(max_len)s 个字符", what=what, max_len=max_len))
    if any(ord(c) < 32 and c not in "\r\n" for c in value):
        raise ValidationError(_("%(what)s含有非法字符", what=what))
    return value


def _theme(value: object) -> str:
    theme = value or "general"
    if not isinstance(theme, str) or theme not in THEMES:
        raise ValidationError(_("请选择店铺风格：综合、游戏或校园"))
    return theme


# --- opening and settings ------------------------------------------------------------------------------------

def open_refusal(agent: Agent | None) -> str | None:
    """Why this agent may not open a shop now, or None when it may."""
    if agent is None:
        return _("只有代理可以开设分站")
    if not agent.active:
        return _("账号已停用，不能开设分站")
    if not agent.tier.may_open_shop:
        return _("当前等级「%(name)s」不能开设分站", name=agent.tier.name)
    return None


def _new_code() -> str:
    for _attempt in range(20):
        code = "".join(secrets.choice(CODE_ALPHABET) for _letter in range(CODE_LENGTH))
        if db.session.scalar(select(AgentShop.id).where(AgentShop.code == code)) is None:
            return code
    raise RuntimeError("could not find a free shop code")


def open_shop(agent_id: int, name: object, markup_bp: int | None = None, theme: object = "general",
              notice: object = None, contact: object = None, actor_id: int | None = None) -> AgentShop:
    """Open the agent's shop. Refuses an agent whose tier may not (ShopNotAllowed), a second shop (ShopExists), a
    markup outside the bounds or below the agent's price (MarkupOutOfBounds). Audited. Commits."""
    try:
        agent = db.session.scalar(select(Agent).where(Agent.id == agent_id).with_for_update())
        if agent is None:
            raise NotFound(_("代理不存在"))
        refusal = open_refusal(agent)
        if refusal:
            raise ShopNotAllowed(refusal)
        if shop_of(agent.id) is not None:
            raise ShopExists(_("该代理已开设分站"))
        bounds = markup_bounds()
        markup = check_markup(bounds[0] if markup_bp is None else markup_bp, bounds)
        shop = AgentShop(agent_id=agent.id, code=_new_code(), name=_text(name, _("店铺名称"), 64, required=True),
                         notice=_text(notice, _("店铺公告"), MAX_NOTICE), theme=_theme(theme),
                         contact=_text(contact, _("联系方式"), 128), markup_bp=markup, status="active")
        db.session.add(shop)
        db.session.flush()
        audit.record("shop.open", "agent_shop", shop.id, None,
                     {"agent_id": agent.id, "code": shop.code, "name": shop.name, "markup_bp": markup},
                     actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return shop


SETTING_COLUMNS = ("name", "notice", "theme", "contact", "markup_bp")


def update_settings(shop_id: int, agent_id: int, values: dict, actor_id: int | None = None) -> AgentShop:
    """The agent changes its shop's name, notice, theme, buyer contact and shop-wide markup (percent text or bp).
    Only its own shop. Audited with the old and new values. Commits; nothing is written on a refusal."""
    try:
        shop = db.session.scalar(select(AgentShop).where(AgentShop.id == shop_id).with_for_update())
        if shop is None or shop.agent_id != agent_id:
            raise NotFound(_("分站不存在"))
        old = audit.snapshot(shop, list(SETTING_COLUMNS))
        shop.name = _text(values.get("name"), _("店铺名称"), 64, required=True)
        shop.notice = _text(values.get("notice"), _("店铺公告"), MAX_NOTICE)
        shop.theme = _theme(values.get("theme"))
        shop.contact = _text(values.get("contact"), _("联系方式"), 128)
        markup = parse_markup(values.get("markup"))
        if markup is None:
            raise MarkupOutOfBounds(_("请填写加价比例"))
        shop.markup_bp = check_markup(markup)
        shop.updated_at = utcnow()
        new = audit.snapshot(shop, list(SETTING_COLUMNS))
        if new != old:
            audit.record("shop.update", "agent_shop", shop.id, old, new, actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return shop


@dataclass(frozen=True)
class ProductSetting:
    product_id: int
    markup: object  # as typed: percent text, '' for the shop's
    hidden: bool
    featured: bool


def set_products(shop_id: int, agent_id: int, rows: list[ProductSetting], actor_id: int | None = None) -> int:
    """Per-product markups, hidden and featured flags. Every row is checked first (an error names the product) and
    nothing is written unless all pass. Audited (the rows that changed). Commits. Returns how many changed."""
    try:
        shop = db.session.scalar(select(AgentShop).where(AgentShop.id == shop_id).with_for_update())
        if shop is None or shop.agent_id != agent_id:
            raise NotFound(_("分站不存在"))
        names = dict(db.session.execute(select(Product.id, Product.name).where(
            Product.id.in_([r.product_id for r in rows]), Product.kind.in_(("card", "direct")))).all())
        bounds = markup_bounds()
        checked = []
        for row in rows:
            if row.product_id not in names:
                raise ProductUnavailable(_("商品不存在"))
            markup = parse_markup(row.markup)
            if markup is not None:
                check_markup(markup, bounds, what=names[row.product_id])
            checked.append((row.product_id, markup, bool(row.hidden), bool(row.featured)))
        existing = {r.product_id: r for r in db.session.scalars(
            select(AgentShopProduct).where(AgentShopProduct.shop_id == shop.id))}
        changes = []
        for product_id, markup, hidden, featured in checked:
            current = existing.get(product_id)
            before = (current.markup_bp, current.hidden, current.featured) if current else (None, False, False)
            if before == (markup, hidden, featured):
                continue
            if current is None:
                current = AgentShopProduct(shop_id=shop.id, product_id=product_id)
                db.session.add(current)
            current.markup_bp, current.hidden, current.featured = markup, hidden, featured
            current.updated_at = utcnow()
            changes.append({"product_id": product_id, "old": before, "new": (markup, hidden, featured)})
        if changes:
            audit.record("shop.products", "agent_shop", shop.id, None, {"products": changes}, actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return len(changes)


def set_logo(shop_id: int, agent_id: int, data: bytes, actor_id: int | None = None) -> AgentShop:
    """A logo upload: decoded by Pillow (PNG, JPEG, GIF or WebP), shrunk to at most 256 px and stored as a PNG we
    drew ourselves, so nothing the agent uploaded is ever served as is. Commits."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValidationError(_("请选择图片文件"))
    if len(data) > MAX_LOGO_BYTES:
        raise ValidationError(_("图片不能超过 1 MB"))
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG", "GIF", "WEBP"):
                raise ValidationError(_("只支持 PNG、JPEG、GIF 或 WebP 图片"))
            if image.width * image.height > 4096 * 4096:
                raise ValidationError(_("图片尺寸过大"))
            image.load()
            logo = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError):
        raise ValidationError(_("无法读取该图片")) from None
    logo.thumbnail((LOGO_SIDE, LOGO_SIDE))
    out = io.BytesIO()
    logo.save(out, format="PNG", optimize=True)
    try:
        shop = db.session.scalar(select(AgentShop).where(AgentShop.id == shop_id).with_for_update())
        if shop is None or shop.agent_id != agent_id:
            raise NotFound(_("分站不存在"))
        shop.logo_png = out.getvalue()
        shop.logo_version = (shop.logo_version or 0) + 1
        shop.updated_at = utcnow()
        audit.record("shop.logo", "agent_shop", shop.id, None, {"logo_version": shop.logo_version},
                     actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return shop


# --- custom domains --------------------------------------------------------------------------------------------

def normalize_host(host: str | None) -> str:
    """A Host header as compared with approved domains: lower case, no port, no trailing dot."""
    host = (host or "").strip().lower()
    if host.startswith("["):  # an IPv6 literal: never a shop
        return host
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


# Loopback names are always the platform: only a client on the server itself (a health check, a tunnel) sends them,
# never a browser following somebody's domain.
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}


def platform_hosts(config=None) -> set[str]:
    """The platform's own host names: PUBLIC_BASE_URL's, PLATFORM_HOSTS and the loopback names."""
    from urllib.parse import urlsplit

    config = config if config is not None else current_app.config
    hosts = {normalize_host(h) for h in config.get("PLATFORM_HOSTS") or []} | LOOPBACK_HOSTS
    base = config.get("PUBLIC_BASE_URL")
    if base:
        hosts.add(normalize_host(urlsplit(base).netloc))
    return {h for h in hosts if h}


def normalize_domain(value: object) -> str:
    """A domain as an agent types it -> lower-case IDNA (punycode) host name; InvalidDomain otherwise."""
    import ipaddress

    if not isinstance(value, str) or not value.strip():
        raise InvalidDomain(_("请填写域名"))
    text = value.strip().lower().rstrip(".")
    if "://" in text or "/" in text or ":" in text or "@" in text or " " in text:
        raise InvalidDomain(_("只填写域名，例如 shop.example.com（不要 http://、路径或端口）"))
    try:
        ipaddress.ip_address(text)
        raise InvalidDomain(_("不能使用 IP 地址"))
    except ValueError:
        pass
    try:
        domain = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidDomain(_("域名格式不正确")) from None
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels) \
            or labels[-1].isdigit():
        raise InvalidDomain(_("域名格式不正确"))
    if domain in platform_hosts() or any(domain.endswith("." + h) for h in platform_hosts()):
        raise InvalidDomain(_("不能使用平台自己的域名"))
    return domain


def domain_of(shop_id: int) -> AgentShopDomain | None:
    return db.session.scalar(select(AgentShopDomain).where(AgentShopDomain.shop_id == shop_id))


def request_domain(shop_id: int, agent_id: int, domain: object, actor_id: int | None = None) -> AgentShopDomain:
    """The agent asks for a custom domain (one per shop; a new one replaces the old request, and an approved one
    goes back to review). Not served until an admin approves it. Audited. Commits."""
    name = normalize_domain(domain)
    try:
        shop = db.session.scalar(select(AgentShop).where(AgentShop.id == shop_id).with_for_update())
        if shop is None or shop.agent_id != agent_id:
            raise NotFound(_("分站不存在"))
        taken = db.session.scalar(select(AgentShopDomain.shop_id).where(AgentShopDomain.domain == name))
        if taken is not None and taken != shop.id:
            raise DomainTaken(_("该域名已被其他分站使用或申请"))
        row = domain_of(shop.id)
        old = {"domain": row.domain, "status": row.status} if row else None
        if row is not None and row.domain == name and row.status in ("requested", "approved"):
            db.session.rollback()
            return row
        if row is None:
            row = AgentShopDomain(shop_id=shop.id, domain=name, status="requested")
            db.session.add(row)
        elif row.status != "requested":
            states.move(DOMAIN_STATES, row.id, row.status, "requested")
        row.domain, row.requested_at = name, utcnow()
        row.decided_at = row.decided_by_id = None
        db.session.flush()
        audit.record("shop.domain.request", "agent_shop", shop.id, old, {"domain": name, "status": "requested"},
                     actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    forget_hosts()
    return row


def decide_domain(domain_id: int, approve: bool, actor_id: int | None, reason: str | None = None) -> AgentShopDomain:
    """An admin approves (served from now on) or rejects (or revokes) a shop's domain. Audited. Commits."""
    try:
        row = db.session.scalar(select(AgentShopDomain).where(AgentShopDomain.id == domain_id).with_for_update())
        if row is None:
            raise NotFound(_("域名申请不存在"))
        target = "approved" if approve else "rejected"
        if row.status == target:
            db.session.rollback()
            return row
        old = row.status
        states.move(DOMAIN_STATES, row.id, old, target, decided_at=utcnow(), decided_by_id=actor_id)
        audit.record(f"shop.domain.{'approve' if approve else 'reject'}", "agent_shop", row.shop_id,
                     {"domain": row.domain, "status": old}, {"domain": row.domain, "status": target},
                     reason=reason, actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    forget_hosts()
    return row


_hosts_cache: dict[int, tuple[float, dict[str, str]]] = {}


def forget_hosts() -> None:
    """Approved domains are cached per process (SHOP_DOMAIN_CACHE_SECONDS); a decision here is seen at once."""
    _hosts_cache.clear()


def cached_hosts(app) -> dict[str, str] | None:
    """The approved domains cached for this app, or None when they must be read again (no app context needed)."""
    hit = _hosts_cache.get(id(app))
    return hit[1] if hit and hit[0] > time.monotonic() else None


def approved_hosts() -> dict[str, str]:
    """{approved domain: shop code}, cached per app and process for SHOP_DOMAIN_CACHE_SECONDS."""
    key = id(current_app._get_current_object())
    hit = cached_hosts(current_app._get_current_object())
    if hit is not None:
        return hit
    hosts = dict(db.session.execute(select(AgentShopDomain.domain, AgentShop.code)
                                    .join(AgentShop, AgentShop.id == AgentShopDomain.shop_id)
                                    .where(AgentShopDomain.status == "approved")).all())
    seconds = int(current_app.config.get("SHOP_DOMAIN_CACHE_SECONDS", 30))
    if seconds > 0:
        _hosts_cache[key] = (time.monotonic() + seconds, hosts)
    return hosts


# --- admin: suspend and resume -----------------------------------------------------------------------------------

def set_status(shop_id: int, status: str, actor_id: int | None, reason: str | None = None) -> AgentShop:
    """An admin suspends a shop (its pages answer "shop closed", checkout refuses) or resumes it. Audited."""
    if status not in ("active", "suspended"):
        raise ValidationError("unknown shop status")
    try:
        shop = db.session.scalar(select(AgentShop).where(AgentShop.id == shop_id).with_for_update())
        if shop is None:
            raise NotFound(_("分站不存在"))
        if shop.status == status:
            db.session.rollback()
            return shop
        old = shop.status
        states.move(SHOP_STATES, shop.id, old, status, suspended_at=utcnow() if status == "suspended" else None,
                    updated_at=utcnow())
        audit.record("shop.suspend" if status == "suspended" else "shop.resume", "agent_shop", shop.id,
                     {"status": old}, {"status": status}, reason=reason, actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return shop


def own_shop(agent: Agent, shop_id: int | None = None) -> AgentShop:
    """The agent's own shop (and, given, only if it is that one): for portal pages and actions."""
    shop = shop_of(agent.id)
    if shop is None or (shop_id is not None and shop.id != shop_id):
        raise Forbidden(_("只能管理自己的分站"))
    return shop


# --- shop orders -----------------------------------------------------------------------------------------------

def lookup_path_of(order_no: str) -> str | None:
    """Where the buyer of a shop order reads it after paying: its shop's lookup (None: not a shop order)."""
    from app.orders.models import Order

    code = db.session.scalar(select(AgentShop.code).join(Order, Order.shop_id == AgentShop.id)
                             .where(Order.order_no == order_no))
    return f"/s/{code}/lookup" if code else None

"""Read models for the agent portal: what an agent may see, always through app.scope."""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from flask_babel import gettext
from sqlalchemy import func, select

from app.agents.models import Agent
from app.catalog import cards
from app.catalog.models import Category, Product
from app.catalog.service import price_for, stock_levels
from app.errors import Forbidden, NotFound
from app.extensions import db
from app.ledger.service import agent_balances
from app.orders import service as orders
from app.orders.models import Order
from app.scope import downline_ids


@dataclass(frozen=True)
class ProductOffer:
    id: int
    name: str
    category: str
    kind: str
    face_price: int
    my_price: int
    in_stock: bool
    available: int | None
    max_per_order: int


def offers_for(agent: Agent) -> list[ProductOffer]:
    products = db.session.execute(
        select(Product, Category.name).join(Category, Category.id == Product.category_id)
        .where(Product.active.is_(True), Category.active.is_(True)).order_by(Category.sort_order, Product.id)
    ).all()
    levels = stock_levels(p for p, _ in products)
    offers = []
    for product, category in products:
        level = levels[product.id]
        offers.append(ProductOffer(product.id, product.name, category, product.kind, product.face_price,
                                   price_for(agent.tier, product), level.in_stock, level.available,
                                   product.max_per_order))
    return offers


def buy(agent: Agent, form, ip: str | None) -> Order:
    """The portal's purchase form: a wallet order through risk control (event portal_purchase) with the caller's
    address and the page's device id."""
    device = orders.clean_device_id(form.get("device_id"))
    return orders.place_wallet_order(agent.id, form.get("product_id"), form.get("quantity", "1"),
                                     coupon=form.get("coupon"), account=form.get("account"),
                                     risk=orders.RiskContext(event="portal_purchase", ip=ip, device=device))


def summary(agent: Agent) -> dict:
    balances = agent_balances(agent.id)
    team = db.session.scalar(select(func.count()).select_from(downline_ids(agent).subquery())) - 1
    orders = db.session.scalar(select(func.count()).where(Order.agent_id == agent.id))
    return {"balances": balances, "team_size": team, "order_count": orders}


def order_for_viewer(agent: Agent, order_no: str) -> tuple[Order, bool]:
    """An order in the viewer's scope, and whether the viewer owns it (only owners see card secrets)."""
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    if order is None or order.agent_id is None:
        raise NotFound(gettext("订单不存在"))
    target = db.session.get(Agent, order.agent_id)
    if not target.path.startswith(agent.path):
        raise NotFound(gettext("订单不存在"))  # never confirm that another branch's order exists
    return order, order.agent_id == agent.id


SECRETS_PER_PAGE = 100  # the order page shows a 500-card order a page at a time; the file has them all


def secrets_for_owner(agent: Agent, order: Order, page: int = 1) -> list[str]:
    """One page of an order's secrets, for its owner only. A reusable secret's reveal is recorded and committed
    before it is shown (a refund then keeps its use)."""
    if order.agent_id != agent.id:
        raise Forbidden(gettext("只有下单人可以查看卡密"))
    if order.status not in ("delivered", "disputed"):
        return []
    shown = cards.reveal(order.id, offset=(max(page, 1) - 1) * SECRETS_PER_PAGE, limit=SECRETS_PER_PAGE)
    db.session.commit()
    return shown


def secret_pages(order: Order) -> int:
    """Pages of the order page's secrets list (an order of n cards has n secrets once delivered)."""
    return max(1, -(-order.quantity // SECRETS_PER_PAGE))


def public_offers(price_of: Callable[[Product], int] | None = None, exclude: Collection[int] = ()) -> list[dict]:
    """The storefront catalogue: public (face) price after time-bounded rules for everyone; stock yes or no.

    An agent's shop (app.agentshops) lists the same catalogue at its own prices (`price_of`), without the products
    it hides (`exclude`)."""
    products = db.session.execute(
        select(Product, Category.name).join(Category, Category.id == Product.category_id)
        .where(Product.active.is_(True), Category.active.is_(True), Product.kind.in_(("card", "direct")))
        .order_by(Category.sort_order, Product.id)).all()
    products = [(p, category) for p, category in products if p.id not in exclude]
    levels = stock_levels(p for p, _ in products)
    price_of = price_of or (lambda product: price_for(None, product))
    return [{"id": p.id, "name": p.name, "category": category, "kind": p.kind, "price": price_of(p),
             "in_stock": levels[p.id].in_stock} for p, category in products]

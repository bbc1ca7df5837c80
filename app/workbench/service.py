"""Read models of the home pages: the staff workbench (工作台) and the agent's home. Read-only: plain queries over the
rollups and the queues, never a write service (STYLE.md 12).

Staff: today against yesterday (GMV and orders from rollup_sales_daily, exactly the GMV dashboard's figures; success
rate and delivery time p50 / p95 from rollup_delivery_daily, the products dashboard's), the to-do list of the
reader's role (each queue with its count and the screen that works it), and delivery times per product and supplier.
Agent: balances, today's team sales and own purchases (rollups, the agent's own branch only), today's new
commission, the team, the shop link and notices.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from flask_babel import lazy_gettext as _
from sqlalchemy import func, select

from app.agents.models import Agent
from app.analytics import delivery
from app.analytics.models import PLATFORM_SCOPE, AgentDaily, SalesDaily
from app.clock import business_day_start, business_today
from app.extensions import db
from app.scope import downline_ids

M, F, S = "Manager", "Finance", "Support"


# --- today against yesterday --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DayFigures:
    day: date
    gmv: int  # fen, delivered that day (refunds netted), as the GMV dashboard
    orders: int
    delivery: delivery.DeliveryStats  # orders paid that day


def sales_by_day(scope_id: int, days: list[date]) -> dict[date, tuple[int, int]]:
    """{day: (orders, gmv)} of a rollup scope."""
    rows = db.session.execute(
        select(SalesDaily.day, func.sum(SalesDaily.orders), func.sum(SalesDaily.gmv))
        .where(SalesDaily.scope_id == scope_id, SalesDaily.day.in_(days)).group_by(SalesDaily.day)).all()
    return {day: (int(n or 0), int(g or 0)) for day, n, g in rows}


def today_and_yesterday(today: date | None = None) -> tuple[DayFigures, DayFigures]:
    today = today or business_today()
    yesterday = today - timedelta(days=1)
    sales = sales_by_day(PLATFORM_SCOPE, [today, yesterday])
    out = []
    for day in (today, yesterday):
        orders, gmv = sales.get(day, (0, 0))
        out.append(DayFigures(day, gmv, orders, delivery.platform_stats(day, day)))
    return out[0], out[1]


@dataclass(frozen=True)
class DeliveryRow:
    product: str
    supplier: str
    stats: delivery.DeliveryStats


def delivery_rows(day: date, limit: int = 10) -> list[DeliveryRow]:
    """Delivery per product and supplier of the orders paid on `day`: slowest p95 first (then failures)."""
    from app.catalog.models import Product, Supplier

    stats = delivery.by_product_supplier(day, day)
    if not stats:
        return []
    products = dict(db.session.execute(select(Product.id, Product.name).where(
        Product.id.in_(sorted({p for p, _ in stats})))).all())
    suppliers = dict(db.session.execute(select(Supplier.id, Supplier.name).where(
        Supplier.id.in_(sorted({s for _, s in stats})))).all())
    rows = [DeliveryRow(products.get(p, str(p)), suppliers.get(s, str(s)), st) for (p, s), st in stats.items()]
    rows.sort(key=lambda r: (-(r.stats.p95_ms or 0) - (10 ** 12 if r.stats.overflow_p95 else 0),
                             -r.stats.failed, r.product, r.supplier))
    return rows[:limit]


# --- the to-do list -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Queue:
    """One queue of work: what it is, who has it on their list, how many wait, and the screen that works it."""
    key: str
    label: object  # lazy string
    hint: object
    url: str
    view: str  # the FAB view (and permission) that opens `url`: the item is shown only to whoever may open it
    permission: str
    roles: tuple[str, ...]  # roles whose list has it; Admin's has every queue
    count: Callable[[], int]


@dataclass(frozen=True)
class TodoItem:
    key: str
    label: str
    hint: str
    url: str
    count: int


def _count(query) -> Callable[[], int]:
    return lambda: int(db.session.scalar(query()) or 0)


def _queues() -> list[Queue]:
    from app.catalog.models import StockAlert
    from app.network.models import Withdrawal
    from app.notices.models import DeliveryNotice
    from app.orders.models import Order
    from app.outbox.models import OutboxMessage
    from app.payments.models import Dispute, PaymentAlert, Refund
    from app.suppliers import sla
    from app.suppliers.models import RechargeAttempt, SupplierAlert

    def counted(model, *where):
        return _count(lambda: select(func.count()).select_from(model).where(*where))

    return [
        Queue("risk_reviews", _("风控审核"), _("付款后被风控拦下的订单，等待通过或拒绝"), "/risk-review/",
              "RiskReviewView", "can_index", (M, S), counted(Order, Order.status == "reviewing")),
        Queue("disputes", _("维权待处理"), _("买家反映未到账或卡密无效"), "/disputes/",
              "DisputeQueueView", "can_index", (M, S), counted(Dispute, Dispute.status == "open")),
        Queue("sla_overdue", _("超时未到账"), _("直充付款后超过到账承诺仍未到账"), "/delivery-sla/",
              "DeliverySlaView", "can_index", (M, S), lambda: sla.overdue_count()),
        Queue("unknown_topups", _("直充结果未知"), _("上游超时或无应答，需向供应商核实；不会自动退款"),
              "/orders/list/?_flt_0_upstream_status=unknown", "OrderView", "can_list", (M, S),
              counted(RechargeAttempt, RechargeAttempt.status == "unknown")),
        Queue("failed_notices", _("发货通知失败"), _("发货邮件或短信未能送达，需重发"),
              "/delivery-notices/list/?_flt_0_status=failed", "DeliveryNoticeView", "can_list", (M, S),
              counted(DeliveryNotice, DeliveryNotice.status == "failed")),
        Queue("withdrawals", _("提现待审核"), _("代理的提现申请"), "/withdrawal-review/",
              "WithdrawalQueueView", "can_index", (M, F), counted(Withdrawal, Withdrawal.status == "pending_review")),
        Queue("refunds_failed", _("退款失败"), _("渠道拒绝或异常的退款，需重试或人工确认"),
              "/refunds/list/?_flt_0_status=failed", "RefundView", "can_list", (M, F),
              counted(Refund, Refund.status == "failed")),
        Queue("payment_alerts", _("支付告警"), _("退款无应答、迟到的付款等"), "/payment-alerts/list/",
              "PaymentAlertView", "can_list", (M, F), counted(PaymentAlert, PaymentAlert.resolved_at.is_(None))),
        Queue("low_stock", _("补货提醒"), _("卡密或直充货源低于补货阈值"), "/stock-alerts/list/",
              "StockAlertView", "can_list", (M,), counted(StockAlert, StockAlert.resolved_at.is_(None))),
        Queue("supplier_balance", _("供应商余额不足"), _("在上游的预付余额低于提醒阈值"), "/supplier-alerts/list/",
              "SupplierAlertView", "can_list", (M,), counted(SupplierAlert, SupplierAlert.resolved_at.is_(None))),
        Queue("failed_callbacks", _("回调失败"), _("推送给代理 notify_url 的订单回调已放弃重试"),
              "/callback-attempts/list/", "CallbackAttemptAdminView", "can_list", (M,),
              counted(OutboxMessage, OutboxMessage.topic == "order_callback", OutboxMessage.status == "failed")),
    ]


def queues_for(role_names: set[str], may_open: Callable[[str, str], bool]) -> list[Queue]:
    """The queues on a reader's list: its roles' (Admin: all), and only those whose screen it may open."""
    admin = "Admin" in role_names
    return [q for q in _queues() if (admin or role_names & set(q.roles)) and may_open(q.permission, q.view)]


def todo(role_names: set[str], may_open: Callable[[str, str], bool]) -> list[TodoItem]:
    """The reader's to-do list: every queue of its role with its count now (waiting ones first)."""
    items = [TodoItem(q.key, str(q.label), str(q.hint), q.url, q.count()) for q in queues_for(role_names, may_open)]
    return sorted(items, key=lambda i: i.count == 0)  # stable: the declared order within each group


# --- the agent's home ---------------------------------------------------------------------------------------------

# Providers of an agent's shop link: (label, url) or None. The agent-shops domain registers one; until then the home
# shows no shop card (an agent without a shop, or a platform without shops).
_SHOP_LINKS: list[Callable[[Agent], tuple[str, str] | None]] = []


def register_shop_link(provider: Callable[[Agent], tuple[str, str] | None]) -> None:
    if provider not in _SHOP_LINKS:
        _SHOP_LINKS.append(provider)


def shop_link(agent: Agent) -> tuple[str, str] | None:
    for provider in _SHOP_LINKS:
        link = provider(agent)
        if link:
            return link
    return None


@dataclass
class AgentHome:
    balances: dict
    team_size: int
    team_new_today: int
    team_orders_today: int  # the branch's (itself and its downline) delivered orders today, refunds netted
    team_gmv_today: int
    team_gmv_yesterday: int
    own_orders_today: int
    own_gmv_today: int
    commission_today: int  # new commission (and shop profit) credited to its pending account today, fen
    shop: tuple[str, str] | None
    announcements: list = field(default_factory=list)
    coupons: list[dict] = field(default_factory=list)
    withdrawals_in_review: int = 0
    realname_verified: bool = False


PROFIT_KINDS = ("commission_accrual", "shop_profit")  # journals that credit an agent's pending account with earnings


def agent_home(agent: Agent, today: date | None = None) -> AgentHome:
    from app.announcements import service as announcements
    from app.ledger.models import Account, Journal, Posting
    from app.ledger.service import agent_account_code, agent_balances
    from app.network.models import RealNameVerification, Withdrawal
    from app.support import compensation

    today = today or business_today()
    start = business_day_start()
    team = downline_ids(agent).subquery()
    team_size = db.session.scalar(select(func.count()).select_from(team)) - 1
    new_today = db.session.scalar(select(func.count()).select_from(Agent).where(
        Agent.path.like(agent.path + "%"), Agent.id != agent.id, Agent.created_at >= start))
    sales = sales_by_day(agent.id, [today, today - timedelta(days=1)])
    own = db.session.execute(select(func.coalesce(func.sum(AgentDaily.orders), 0),
                                    func.coalesce(func.sum(AgentDaily.gmv), 0))
                             .where(AgentDaily.agent_id == agent.id, AgentDaily.day == today)).one()
    pending = db.session.scalar(select(Account.id).where(Account.code == agent_account_code(agent.id, "pending")))
    earned = 0
    if pending is not None:
        earned = db.session.scalar(
            select(func.coalesce(func.sum(Posting.amount), 0)).join(Journal, Journal.id == Posting.journal_id)
            .where(Posting.account_id == pending, Journal.kind.in_(PROFIT_KINDS), Journal.created_at >= start,
                   Posting.amount > 0))
    in_review = db.session.scalar(select(func.count()).select_from(Withdrawal).where(
        Withdrawal.agent_id == agent.id, Withdrawal.status == "pending_review"))
    verified = db.session.scalar(select(RealNameVerification.id).where(
        RealNameVerification.agent_id == agent.id, RealNameVerification.status == "verified").limit(1)) is not None
    return AgentHome(
        balances=agent_balances(agent.id), team_size=team_size, team_new_today=new_today,
        team_orders_today=sales.get(today, (0, 0))[0], team_gmv_today=sales.get(today, (0, 0))[1],
        team_gmv_yesterday=sales.get(today - timedelta(days=1), (0, 0))[1],
        own_orders_today=int(own[0]), own_gmv_today=int(own[1]), commission_today=int(earned or 0),
        shop=shop_link(agent), announcements=announcements.current("agents"),
        coupons=compensation.open_coupons_for_agent(agent.id), withdrawals_in_review=int(in_review or 0),
        realname_verified=verified)

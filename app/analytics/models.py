"""Daily rollups the dashboards read instead of scanning raw orders.

A delivery (refund) writes one rollup_pending row in its transaction; the fold job turns pending rows into
delta rows (app/analytics/service.py `fold_orders`), so no order ever waits on a shared row or a lock; a
compaction job merges the deltas of one key into one row, and a rebuild job recomputes any range from the source
tables. Readers always GROUP BY, so a key split over several rows sums to the same answer.

`scope_id` is whose figures a row counts toward: 0 for the whole platform, an agent's id for that agent's branch
(itself and its whole downline). An order is counted once at scope 0 and once for the buyer and each agent on the
buyer's upline path snapshot, so an agent's dashboard reads `scope_id = <agent id>` and never sees another branch.
`day` is the China business day (Asia/Shanghai) of delivery.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, DateTime, Index, Integer, SmallInteger, String

from app.extensions import db

PLATFORM_SCOPE = 0


class SalesDaily(db.Model):
    """GMV, orders, quantity, cost, fees and margin per day, product, channel, buyer tier and supplier."""
    __tablename__ = "rollup_sales_daily"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    scope_id = Column(Integer, nullable=False)
    day = Column(Date, nullable=False)
    product_id = Column(Integer, nullable=False)
    category_id = Column(Integer, nullable=False)
    channel = Column(String(24), nullable=False)
    tier_id = Column(Integer)  # the buyer's tier at purchase; NULL for storefront guests
    supplier_id = Column(Integer, nullable=False)
    orders = Column(Integer, nullable=False, default=0)
    quantity = Column(Integer, nullable=False, default=0)
    gmv = Column(BigInteger, nullable=False, default=0)  # paid amount, fen
    cost = Column(BigInteger, nullable=False, default=0)  # owed to the supplier before its fee, fen
    fees = Column(BigInteger, nullable=False, default=0)  # the platform's service fee from the supplier, fen
    margin = Column(BigInteger, nullable=False, default=0)  # gmv - cost, fen

    __table_args__ = (Index("ix_rollup_sales_scope_day", "scope_id", "day"),)


class ProfileDaily(db.Model):
    """Orders and GMV per day by one buyer dimension at a time, and by category (what each segment buys).

    dimension: age_band, gender, province (real-name data; 'unknown' without it), hour (0-23, China time),
    buyer_type (first, returning).
    """
    __tablename__ = "rollup_profile_daily"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    scope_id = Column(Integer, nullable=False)
    day = Column(Date, nullable=False)
    dimension = Column(String(16), nullable=False)
    value = Column(String(16), nullable=False)
    category_id = Column(Integer, nullable=False)
    orders = Column(Integer, nullable=False, default=0)
    gmv = Column(BigInteger, nullable=False, default=0)

    __table_args__ = (Index("ix_rollup_profile_scope_dim_day", "scope_id", "dimension", "day"),)


class AgentDaily(db.Model):
    """What each buying agent bought per day: active agents, retention by cohort, top buyers."""
    __tablename__ = "rollup_agent_daily"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    day = Column(Date, nullable=False)
    agent_id = Column(Integer, nullable=False)
    orders = Column(Integer, nullable=False, default=0)
    gmv = Column(BigInteger, nullable=False, default=0)

    __table_args__ = (
        Index("ix_rollup_agent_day", "day", "agent_id"),
        Index("ix_rollup_agent_agent_day", "agent_id", "day"),
    )


class ActiveDaily(db.Model):
    """How many agents bought per day (orders that day summed above zero), per scope and tier: the active-agent
    series without a distinct count over rollup_agent_daily. Delta rows (+1 when an agent's day turns active,
    -1 when refunds empty it); scope_id 0 and every agent on the buyer's path, the buyer included; tier_id and path
    are the agent's when the row was written (a rebuild takes them as they are then)."""
    __tablename__ = "rollup_active_daily"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    scope_id = Column(Integer, nullable=False)
    day = Column(Date, nullable=False)
    tier_id = Column(Integer, nullable=False)
    agents = Column(Integer, nullable=False, default=0)

    __table_args__ = (Index("ix_rollup_active_scope_day", "scope_id", "day"),)


class RetentionMonthly(db.Model):
    """Retention by cohort: how many agents who joined in `cohort` (first day of the China month of
    agent.created_at) bought in `month` (first day of the month), per scope and tier. Delta rows like
    rollup_active_daily; scopes are 0 and the buyer's uplines only (a branch's own root is not in its cohorts)."""
    __tablename__ = "rollup_retention_monthly"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    scope_id = Column(Integer, nullable=False)
    cohort = Column(Date, nullable=False)
    month = Column(Date, nullable=False)
    tier_id = Column(Integer, nullable=False)
    agents = Column(Integer, nullable=False, default=0)

    __table_args__ = (Index("ix_rollup_retention_scope_cohort", "scope_id", "cohort"),)


class MoneyDaily(db.Model):
    """Money flows per day: commissions accrued / settled / reversed, withdrawals, revenue, fees, refunds.

    flow: commission_accrued, commission_settled, commission_reversed, withdrawal_requested, withdrawal_paid,
    withdrawal_fee, revenue, fees, supplier_cost, refunds, shop_profit_accrued, shop_profit_reversed (agent
    shops; settled shop profit is in commission_settled: one settlement moves both). scope_id as above (an
    agent's branch: flows of the agents in it).
    """
    __tablename__ = "rollup_money_daily"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    scope_id = Column(Integer, nullable=False)
    day = Column(Date, nullable=False)
    flow = Column(String(24), nullable=False)
    amount = Column(BigInteger, nullable=False, default=0)  # fen
    count = Column(Integer, nullable=False, default=0)

    __table_args__ = (Index("ix_rollup_money_scope_day", "scope_id", "day"),)


class ShopDaily(db.Model):
    """Agent shops (分站): orders, GMV and the agents' shop profit per day and shop (counted delivered orders, a
    refund subtracted on the delivery day). scope_id 0 and every agent on the shop's agent's path (itself
    included), so an agent reads its own shop and its downline's."""
    __tablename__ = "rollup_shop_daily"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    scope_id = Column(Integer, nullable=False)
    day = Column(Date, nullable=False)
    shop_id = Column(Integer, nullable=False)
    orders = Column(Integer, nullable=False, default=0)
    gmv = Column(BigInteger, nullable=False, default=0)  # paid amount, fen
    profit = Column(BigInteger, nullable=False, default=0)  # the agents' shop profit, fen

    __table_args__ = (Index("ix_rollup_shop_scope_day", "scope_id", "day"),)


class RollupState(db.Model):
    """Watermarks of the rollup jobs (e.g. the last journal id folded into rollup_money_daily)."""
    __tablename__ = "rollup_state"
    name = Column(String(32), primary_key=True)
    value = Column(BigInteger, nullable=False, default=0)


class DeliveryDaily(db.Model):
    """How fast paid orders were delivered: a histogram of paid → delivered times per China day of payment
    (orders.paid_at), product and supplier, for the whole platform only (staff read it; no agent scope).

    `bucket` is an index into app.analytics.delivery.BUCKETS_MS (the delivery took at most that many ms; the last
    index: longer than the last bound), or FAILED_BUCKET (-1): paid, then failed or refunded without ever being
    delivered. A delivery counts once, also when the order is refunded later (it was delivered that fast); a risk
    control rejection is not a delivery failure and is not counted. `total_ms` sums the exact times (the mean).
    `supplier_id`: the supplier that delivered it; for a top-up never delivered, the last supplier it was sent to.
    """
    __tablename__ = "rollup_delivery_daily"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    day = Column(Date, nullable=False)
    product_id = Column(Integer, nullable=False)
    supplier_id = Column(Integer, nullable=False)
    bucket = Column(SmallInteger, nullable=False)
    orders = Column(Integer, nullable=False, default=0)
    total_ms = Column(BigInteger, nullable=False, default=0)

    __table_args__ = (Index("ix_rollup_delivery_day", "day"),)


class RollupPending(db.Model):
    """An order delivered (sign +1), refunded after delivery (sign -1), or ended without a delivery after it was
    paid (sign 0: failed, or refunded from paid / delivering) and not yet folded into the rollups.

    Written by app.orders.service.transition in the delivering (refunding, failing) transaction: one INSERT, no
    read, no lock. `fold_orders` reads the order's facts, adds its deltas and deletes the row, in one transaction.
    """
    __tablename__ = "rollup_pending"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id = Column(Integer, nullable=False)
    sign = Column(SmallInteger, nullable=False)
    created_at = Column(DateTime, nullable=False)

    __table_args__ = (Index("ix_rollup_pending_order", "order_id"),)

"""Delivery time (paid → delivered): the histogram buckets of rollup_delivery_daily, the one definition of "how
long a delivery took" (Python for the fold, SQL for the rebuild: both the same integer milliseconds), and the
read side every screen uses (the workbench, the products dashboard): counts, success rate and p50 / p95.

A percentile is read off the histogram as the upper bound of the bucket that holds it: "p95 ≤ 45 s" means at least
95% of the deliveries took 45 seconds or less. It is never an interpolated guess, and a fold and a rebuild give the
same histogram, so every screen shows the same figure for the same days.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select

from app.analytics.models import DeliveryDaily
from app.extensions import db

# Upper bounds (ms, inclusive) of the buckets: fine where card secrets (milliseconds) and top-ups (seconds to
# minutes) land, with the promise (1 minute) and the SLA (DELIVERY_SLA_MINUTES, 10 by default) among them.
BUCKETS_MS: tuple[int, ...] = (100, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 15_000, 20_000, 30_000, 45_000,
                               60_000, 90_000, 120_000, 180_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000)
OVERFLOW_BUCKET = len(BUCKETS_MS)  # longer than the last bound
FAILED_BUCKET = -1  # paid, then failed or refunded without a delivery
PROMISE_MS = 60_000  # the storefront's promise: delivered within a minute
_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def epoch_ms(at: datetime) -> int:
    """Milliseconds since the epoch of a naive-UTC time, truncated (what the rebuild's SQL computes)."""
    return (at - _EPOCH) // _MS


def elapsed_ms(paid_at: datetime, delivered_at: datetime) -> int:
    """How long a delivery took: both times truncated to the millisecond first, never negative."""
    return max(0, epoch_ms(delivered_at) - epoch_ms(paid_at))


def bucket_of(ms: int) -> int:
    for i, bound in enumerate(BUCKETS_MS):
        if ms <= bound:
            return i
    return OVERFLOW_BUCKET


# --- the same, in SQL (the rebuild) -------------------------------------------------------------------------------

def epoch_ms_sql(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"CAST(floor(extract(epoch from {column}) * 1000) AS bigint)"
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's format): whole seconds, then the first 3 digits of
    # the fraction (strftime('%f') would round them).
    return (f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000"
            f" + CAST(substr({column} || '.000000', 21, 3) AS INTEGER))")


def elapsed_ms_sql(paid: str, delivered: str, dialect: str) -> str:
    diff = f"({epoch_ms_sql(delivered, dialect)} - {epoch_ms_sql(paid, dialect)})"
    return f"CASE WHEN {diff} < 0 THEN 0 ELSE {diff} END"


def bucket_sql(ms: str) -> str:
    whens = " ".join(f"WHEN {ms} <= {bound} THEN {i}" for i, bound in enumerate(BUCKETS_MS))
    return f"CASE {whens} ELSE {OVERFLOW_BUCKET} END"


# --- reading ------------------------------------------------------------------------------------------------------

def sla_ms() -> int:
    return int(current_app.config.get("DELIVERY_SLA_MINUTES", 10)) * 60_000


@dataclass(frozen=True)
class DeliveryStats:
    """Orders paid in a period: how many were delivered (and how fast), how many failed."""
    delivered: int
    failed: int
    total_ms: int
    p50_ms: int | None  # upper bound of the bucket holding the median; None: nothing delivered, or > last bound
    p95_ms: int | None
    within_promise: int  # delivered within PROMISE_MS
    late: int  # delivered after the SLA (buckets entirely above DELIVERY_SLA_MINUTES)
    overflow_p50: bool = False  # the median lies beyond the last bound (shown as "more than an hour")
    overflow_p95: bool = False

    @property
    def finished(self) -> int:
        return self.delivered + self.failed

    @property
    def success_rate_bp(self) -> int | None:
        """Delivered out of finished, in basis points (floored); None when nothing finished."""
        return self.delivered * 10_000 // self.finished if self.finished else None

    @property
    def mean_ms(self) -> int | None:
        return self.total_ms // self.delivered if self.delivered else None


def _percentile(counts: dict[int, int], total: int, q_bp: int) -> tuple[int | None, bool]:
    """(upper bound of the bucket holding the q-th delivery, whether that is the overflow bucket)."""
    if total <= 0:
        return None, False
    rank = -(-total * q_bp // 10_000)  # ceil(total * q): the rank of the q-quantile, 1-based
    seen = 0
    for i in range(OVERFLOW_BUCKET + 1):
        seen += counts.get(i, 0)
        if seen >= rank:
            return (BUCKETS_MS[i], False) if i < OVERFLOW_BUCKET else (None, True)
    return None, True


def stats_from(rows: Iterable[tuple[int, int, int]], late_after_ms: int | None = None) -> DeliveryStats:
    """DeliveryStats from (bucket, orders, total_ms) rows."""
    late_after_ms = sla_ms() if late_after_ms is None else late_after_ms
    counts: dict[int, int] = {}
    total_ms = 0
    for bucket, orders, ms in rows:
        counts[int(bucket)] = counts.get(int(bucket), 0) + int(orders or 0)
        total_ms += int(ms or 0)
    failed = counts.pop(FAILED_BUCKET, 0)
    delivered = sum(counts.values())
    p50, over50 = _percentile(counts, delivered, 5_000)
    p95, over95 = _percentile(counts, delivered, 9_500)
    within = sum(n for i, n in counts.items() if i < OVERFLOW_BUCKET and BUCKETS_MS[i] <= PROMISE_MS)
    late = sum(n for i, n in counts.items() if i > 0 and BUCKETS_MS[i - 1] >= late_after_ms)
    return DeliveryStats(delivered, failed, total_ms, p50, p95, within, late, over50, over95)


def platform_stats(start: date, end: date) -> DeliveryStats:
    """Every order paid on China days start..end (inclusive)."""
    rows = db.session.execute(
        select(DeliveryDaily.bucket, func.sum(DeliveryDaily.orders), func.sum(DeliveryDaily.total_ms))
        .where(DeliveryDaily.day >= start, DeliveryDaily.day <= end).group_by(DeliveryDaily.bucket)).all()
    return stats_from(rows)


def by_product_supplier(start: date, end: date, product_ids: list[int] | None = None) -> dict[tuple[int, int],
                                                                                             DeliveryStats]:
    """{(product_id, supplier_id): stats} of the orders paid on days start..end."""
    query = (select(DeliveryDaily.product_id, DeliveryDaily.supplier_id, DeliveryDaily.bucket,
                    func.sum(DeliveryDaily.orders), func.sum(DeliveryDaily.total_ms))
             .where(DeliveryDaily.day >= start, DeliveryDaily.day <= end)
             .group_by(DeliveryDaily.product_id, DeliveryDaily.supplier_id, DeliveryDaily.bucket))
    if product_ids is not None:
        query = query.where(DeliveryDaily.product_id.in_(product_ids or [-1]))
    grouped: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for product_id, supplier_id, bucket, orders, ms in db.session.execute(query):
        grouped.setdefault((product_id, supplier_id), []).append((bucket, orders, ms))
    limit = sla_ms()
    return {key: stats_from(rows, limit) for key, rows in grouped.items()}


def format_ms(ms: int | None, overflow: bool = False) -> str:
    """A bucket bound for people: '≤ 0.1 秒', '≤ 45 秒', '≤ 3 分钟', '> 1 小时', or '—'."""
    from flask_babel import gettext as _

    if overflow:
        return _("超过 %(n)s 小时", n=BUCKETS_MS[-1] // 3_600_000)
    if ms is None:
        return "—"
    if ms < 1_000:
        seconds = f"{ms / 1000:g}"
        return _("≤ %(n)s 秒", n=seconds)
    if ms < 120_000 or ms % 60_000:
        return _("≤ %(n)s 秒", n=ms // 1000)
    return _("≤ %(n)s 分钟", n=ms // 60_000)

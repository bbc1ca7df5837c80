"""The ledger invariants of DESIGN.md, as one read-only check (`flask kameng ledger-check`, and tests)."""
from __future__ import annotations

from sqlalchemy import text

from app.extensions import db

# Each check is (name, SQL returning offending rows, how to describe a row).
_CHECKS: list[tuple[str, str]] = [
    ("postings do not sum to zero",
     "SELECT COALESCE(SUM(amount), 0) AS total FROM ledger_posting HAVING COALESCE(SUM(amount), 0) <> 0"),
    ("journal does not balance",
     "SELECT journal_id, SUM(amount) AS total FROM ledger_posting GROUP BY journal_id HAVING SUM(amount) <> 0"),
    ("journal has fewer than two postings",
     "SELECT j.id, j.idempotency_key FROM ledger_journal j LEFT JOIN ledger_posting p ON p.journal_id = j.id "
     "GROUP BY j.id, j.idempotency_key HAVING COUNT(p.id) < 2"),
    ("cached balance differs from its postings",
     "SELECT a.code, a.balance, COALESCE(SUM(p.amount), 0) AS postings FROM ledger_account a "
     "LEFT JOIN ledger_posting p ON p.account_id = a.id WHERE a.cached = :true "
     "GROUP BY a.id, a.code, a.balance HAVING a.balance <> COALESCE(SUM(p.amount), 0)"),
    ("cached account is negative",
     "SELECT code, balance FROM ledger_account WHERE cached = :true AND balance < 0"),
    ("delivered order without exactly one sale journal",
     "SELECT o.order_no, COUNT(j.id) AS sale_journals FROM orders o "
     "LEFT JOIN ledger_journal j ON j.order_id = o.id AND j.kind = 'sale' "
     "WHERE o.status = 'delivered' GROUP BY o.id, o.order_no HAVING COUNT(j.id) <> 1"),
    ("refunded order whose sale is not reversed",
     "SELECT o.order_no, SUM(CASE WHEN j.kind = 'sale' THEN 1 ELSE 0 END) AS sales, "
     "SUM(CASE WHEN j.kind = 'sale_reversal' THEN 1 ELSE 0 END) AS reversals FROM orders o "
     "JOIN ledger_journal j ON j.order_id = o.id WHERE o.status = 'refunded' GROUP BY o.id, o.order_no "
     "HAVING SUM(CASE WHEN j.kind = 'sale' THEN 1 ELSE 0 END) <> "
     "SUM(CASE WHEN j.kind = 'sale_reversal' THEN 1 ELSE 0 END)"),
    ("order has a sale journal but was never paid",
     "SELECT o.order_no, o.status FROM orders o JOIN ledger_journal j ON j.order_id = o.id AND j.kind = 'sale' "
     "WHERE o.status IN ('pending_payment', 'closed')"),
    # An order's secrets: normal ones by their order_id, reusable ones (循环卡密) by their uses not given back.
    ("delivered card order without its card secrets",
     "SELECT o.order_no, o.quantity, COALESCE(c.n, 0) + COALESCE(u.n, 0) AS secrets FROM orders o "
     "JOIN product p ON p.id = o.product_id AND p.kind = 'card' "
     "LEFT JOIN (SELECT order_id, COUNT(*) AS n FROM card_secret WHERE order_id IS NOT NULL GROUP BY order_id) c "
     "ON c.order_id = o.id "
     "LEFT JOIN (SELECT order_id, COUNT(*) AS n FROM card_secret_use WHERE returned_at IS NULL GROUP BY order_id) u "
     "ON u.order_id = o.id "
     "WHERE o.status = 'delivered' AND COALESCE(c.n, 0) + COALESCE(u.n, 0) <> o.quantity"),
    # "No card secret belongs to two orders", for both kinds: a normal secret belongs to at most one order (its
    # order_id, and no use rows); a reusable one has at most max_uses uses, its counter equals its use rows not
    # given back, and one order never holds it twice.
    ("card secret sold without an order, or assigned while available",
     "SELECT id, status, order_id FROM card_secret WHERE max_uses IS NULL AND ((status = 'sold' AND order_id IS NULL) "
     "OR (status = 'available' AND order_id IS NOT NULL))"),
    ("normal card secret sold as a reusable one (it would belong to two orders)",
     "SELECT c.id, c.order_id, COUNT(u.id) AS uses FROM card_secret c JOIN card_secret_use u ON u.secret_id = c.id "
     "WHERE c.max_uses IS NULL GROUP BY c.id, c.order_id"),
    ("reusable card secret whose use counter differs from its uses, or past its limit",
     "SELECT c.id, c.uses, c.max_uses, COUNT(u.id) AS use_rows FROM card_secret c "
     "LEFT JOIN card_secret_use u ON u.secret_id = c.id AND u.returned_at IS NULL WHERE c.max_uses IS NOT NULL "
     "GROUP BY c.id, c.uses, c.max_uses, c.order_id "
     "HAVING c.uses <> COUNT(u.id) OR c.uses > c.max_uses OR c.order_id IS NOT NULL"),
    ("reusable card secret sold twice to one order",
     "SELECT secret_id, order_id, COUNT(*) AS n FROM card_secret_use GROUP BY secret_id, order_id HAVING COUNT(*) > 1"),
    ("reusable card secret's use given back after it was revealed",
     "SELECT id, secret_id, order_id FROM card_secret_use WHERE returned_at IS NOT NULL AND revealed_at IS NOT NULL"),
    ("same card secret stored twice for a product (would sell to two orders)",
     "SELECT product_id, secret_hash, COUNT(*) AS n FROM card_secret GROUP BY product_id, secret_hash "
     "HAVING COUNT(*) > 1"),
]


def check_ledger(limit: int = 20) -> list[str]:
    """Return one line per broken invariant (empty when all hold)."""
    problems: list[str] = []
    for name, sql in _CHECKS:
        rows = db.session.execute(text(sql), {"true": True}).mappings().all()
        for row in rows[:limit]:
            problems.append(f"{name}: {dict(row)}")
        if len(rows) > limit:
            problems.append(f"{name}: … and {len(rows) - limit} more")
    return problems

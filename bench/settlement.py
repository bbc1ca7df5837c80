"""Commission settlement at scale on PostgreSQL: build N due pending commissions set-based, settle them, time it.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_settle .venv/bin/python bench/settlement.py \
        --count 1000000

DROPS and recreates the bench database (its name must contain "bench"). Builds AGENTS agents under one root
through the services, one real wallet order, then copies it set-based into ceil(N / AGENTS) orders (status
'paid', no sale journal needed) and inserts N commissions (every copied order × every agent) with one
INSERT ... SELECT generate_series, plus one accrual journal whose postings and cached pending balances match,
so the ledger check holds. Then runs app.network.settlement.settle and checks the ledger. Last line: seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import database_url, make_app, migrate, recreate_database  # noqa: E402

AGENTS = 1000
AMOUNT = 50  # fen per commission


def build(count: int) -> None:
    from sqlalchemy import text

    from app.agents import service as agents
    from app.agents.models import Tier
    from app.catalog import cards
    from app.catalog import service as catalog
    from app.catalog.models import Category, Product
    from app.extensions import db
    from app.ledger import service as ledger
    from app.orders import service as orders
    from app.orders.models import Order

    ledger.ensure_platform_accounts()
    tier = Tier(name="bench", rank=1, discount_bp=10000, settle_days=0)
    db.session.add(tier)
    db.session.commit()
    root = agents.create_agent("root", tier.id, None)
    db.session.commit()
    ids = []
    for i in range(AGENTS):
        ids.append(agents.create_agent(f"a{i}", tier.id, root.id).id)
    db.session.commit()
    cat = Category(name="bench")
    db.session.add(cat)
    db.session.commit()
    p = Product(name="bench", category_id=cat.id, supplier_id=catalog.platform_supplier().id, kind="card",
                face_price=1000, cost=800, max_per_order=10)
    db.session.add(p)
    db.session.commit()
    cards.run_import(cards.create_import(p.id, "BENCH-SECRET-1", None, "paste").id)
    ledger.post_journal("bench:fund", "adjustment", [ledger.Line(f"agent:{root.id}:wallet", 100000),
                                                     ledger.Line("platform:adjustments", -100000)])
    db.session.commit()
    template = orders.place_wallet_order(root.id, p.id, 1).id
    per_agent_orders = -(-count // AGENTS)
    cols = [c.name for c in Order.__table__.columns if c.name not in ("id", "order_no", "status", "out_trade_no")]
    conn = db.session.connection()
    conn.execute(text(
        f"INSERT INTO orders (order_no, status, {', '.join(cols)}) "
        f"SELECT 'B' || lpad(g::text, 12, '0'), 'paid', {', '.join('o.' + c for c in cols)} "
        f"FROM orders o, generate_series(1, :n) g WHERE o.id = :t"), {"n": per_agent_orders, "t": template})
    conn.execute(text(
        "INSERT INTO commission (order_id, agent_id, level, rate_bp, base_amount, amount, status, settle_after, "
        "created_at) SELECT o.id, a.id, 1, 500, 1000, :amt, 'pending', now() - interval '1 day', now() "
        "FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM orders WHERE order_no LIKE 'B%') o "
        "CROSS JOIN (SELECT unnest(CAST(:ids AS int[])) AS id) a "
        "ORDER BY o.rn, a.id LIMIT :n"), {"amt": AMOUNT, "ids": ids, "n": count})
    # One accrual journal matching the rows, and the cached pending balances.
    jid = conn.execute(text(
        "INSERT INTO ledger_journal (idempotency_key, kind, content_hash, memo, created_at) "
        "VALUES ('bench:accrue', 'commission_accrual', 'bench', 'bench', now()) RETURNING id")).scalar()
    conn.execute(text(
        "INSERT INTO ledger_posting (journal_id, account_id, amount, created_at) "
        "SELECT :j, acc.id, s.total, now() FROM (SELECT agent_id, SUM(amount) AS total FROM commission "
        "WHERE status = 'pending' GROUP BY agent_id) s JOIN ledger_account acc "
        "ON acc.agent_id = s.agent_id AND acc.kind = 'pending'"), {"j": jid})
    conn.execute(text(
        "INSERT INTO ledger_posting (journal_id, account_id, amount, created_at) "
        "SELECT :j, acc.id, -(SELECT SUM(amount) FROM commission WHERE status = 'pending'), now() "
        "FROM ledger_account acc WHERE acc.code = 'platform:commission_expense'"), {"j": jid})
    conn.execute(text(
        "UPDATE ledger_account acc SET balance = acc.balance + s.total FROM (SELECT agent_id, SUM(amount) AS total "
        "FROM commission WHERE status = 'pending' GROUP BY agent_id) s "
        "WHERE acc.agent_id = s.agent_id AND acc.kind = 'pending'"))
    db.session.commit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    url = database_url()
    recreate_database(url)
    migrate(url)
    app = make_app(url)
    with app.app_context():
        from app.extensions import db
        from app.ledger.invariants import check_ledger
        from app.network import settlement

        t0 = time.perf_counter()
        build(args.count)
        print(f"built {args.count} pending commissions in {time.perf_counter() - t0:.1f} s")
        assert check_ledger() == [], check_ledger()
        t0 = time.perf_counter()
        run = settlement.settle(trigger="cli", batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        print(settlement.report(run))
        problems = check_ledger()
        print("ledger invariants:", "hold" if not problems else problems[:5])
        db.session.remove()
        print(f"settled {run.settled_count} in {seconds:.2f} s ({run.settled_count / seconds:.0f}/s)")
        print(f"{seconds:.2f}")


if __name__ == "__main__":
    main()

"""Many resellers racing over HTTP for the last secrets of one card product: exactly as many winners as secrets.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_race REDIS_URL=redis://127.0.0.1:6379/12 \\
        .venv/bin/python bench/race.py --buyers 1000 --secrets 100 [--threads 64] [--workers 4]

It DROPS and recreates the bench database (its name must contain "bench"), migrates it with Alembic, and builds one
card product with exactly --secrets secrets (imported through app.catalog.cards) and --buyers agents, each with a
funded wallet and its own API key (app.openapi.service.create_key). This is the reseller path, where races happen:
signed Open API wallet purchases, POST /open/v1/orders (app/openapi/client.py), one purchase per buyer, served by
gunicorn (default 4 sync workers, like bench/openapi.py) with the per-key rate limit raised.

--threads client threads (default 64) start together behind a barrier and take buyers from a shared queue. Every
answer is classed: a win (201, delivered, exactly one secret), a clean out-of-stock (409 with the Open API's
`out_of_stock` code, app/catalog/errors.py), a 5xx, or other (anything else, network errors included).

It asserts, and prints each check: winners == secrets, every winner's secret distinct and the stock's, every other
answer a clean out-of-stock, no 5xx, no secret sold to two orders (the database's card_secret rows: exactly
--secrets sold, each to its own delivered order, none left), wallets down exactly winners x price and only the
winners', and the ledger invariants (app.ledger.invariants.check_ledger). Exit status 1 if any check fails.
Last line: "headline: race B buyers / S secrets: W winners, O out-of-stock, X other, F 5xx, ledger clean, T s".
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/kameng_bench_race")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Gunicorn,
    database_url,
    ensure_stock,
    make_app,
    migrate,
    percentile,
    recreate_database,
)

FACE_PRICE = 1000  # ¥10.00
COST = 800
DISCOUNT_BP = 9500
UNIT_PRICE = FACE_PRICE * DISCOUNT_BP // 10000
START_BALANCE = 100_000  # fen: enough for one purchase, never the limiting factor


@dataclass
class Buyer:
    agent_id: int
    app_key: str
    secret: str


@dataclass
class Outcome:
    wins: dict[str, list[str]] = field(default_factory=dict)  # order_no -> its card secrets
    out_of_stock: int = 0
    server_errors: int = 0
    other: Counter = field(default_factory=Counter)
    bad_wins: list[str] = field(default_factory=list)  # 201s that are not "delivered with one secret"
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"win": [], "out_of_stock": []})


def build_data(app, buyers: int, secrets: int) -> tuple[int, list[Buyer]]:
    from app.agents import service as agents
    from app.agents.models import Tier
    from app.catalog import service as catalog
    from app.catalog.models import Category, Product
    from app.extensions import db
    from app.ledger import service as ledger
    from app.openapi.service import create_key

    app.appbuilder.sm.create_db()  # FAB's built-in roles and FAB_ROLES
    ledger.ensure_platform_accounts()
    tier = Tier(name="bench-race-总代", rank=40, discount_bp=DISCOUNT_BP, may_recruit=True, may_withdraw=True,
                min_withdrawal=10000, withdrawal_fee_bp=0, direct_commission_bp=0, indirect_commission_bp=0,
                daily_limit=0, settle_days=1)
    category = Category(name="bench-race-游戏点卡")
    db.session.add_all([tier, category])
    db.session.flush()
    product = Product(name="bench race 点卡 10元", category_id=category.id, supplier_id=catalog.platform_supplier().id,
                      kind="card", face_price=FACE_PRICE, cost=COST, max_per_order=10, low_stock_threshold=1)
    db.session.add(product)
    db.session.commit()
    product_id = product.id
    ensure_stock([product_id], secrets)
    result = []
    for i in range(buyers):
        agent = agents.create_agent(f"race-bench{i + 1:04d}", tier.id, None)
        ledger.post_journal(f"bench:fund:{agent.id}", "adjustment", [
            ledger.Line(ledger.agent_account_code(agent.id, "wallet"), START_BALANCE),
            ledger.Line("platform:adjustments", -START_BALANCE)], memo="bench funding")
        key, secret = create_key(agent.id, "bench")  # commits the agent, its funding and its key
        result.append(Buyer(agent.id, key.app_key, secret))
    return product_id, result


def race(base_url: str, buyers: list[Buyer], product_id: int, threads: int) -> tuple[Outcome, float]:
    """Every buyer buys once; `threads` clients start together. Returns the outcome and the race's wall time."""
    import requests

    from app.openapi.client import OpenApiClient

    outcome = Outcome()
    lock = threading.Lock()
    todo: queue.SimpleQueue[Buyer] = queue.SimpleQueue()
    for buyer in buyers:
        todo.put(buyer)
    start = threading.Barrier(threads + 1)
    run_id = uuid.uuid4().hex[:8]

    def buy(session, buyer: Buyer) -> None:
        client = OpenApiClient(base_url, buyer.app_key, buyer.secret, timeout=120, session=session)
        t = time.perf_counter()
        try:
            r = client.create_order(f"race-{run_id}-{buyer.agent_id}", product_id)
            latency = time.perf_counter() - t
        except requests.RequestException as exc:
            with lock:
                outcome.other[f"net:{type(exc).__name__}"] += 1
            return
        try:
            body = r.json()
        except ValueError:
            body = None
        with lock:
            if r.status_code >= 500:
                outcome.server_errors += 1
                outcome.other[f"http {r.status_code}"] += 0  # named in the breakdown, counted as 5xx
            elif r.status_code == 201 and isinstance(body, dict):
                order_secrets = body.get("card_secrets") or []
                outcome.wins[str(body.get("order_no"))] = order_secrets
                outcome.latencies["win"].append(latency)
                if body.get("status") != "delivered" or len(order_secrets) != 1:
                    outcome.bad_wins.append(f"{body.get('order_no')}: {body.get('status')}, "
                                            f"{len(order_secrets)} secrets")
            elif (r.status_code == 409 and isinstance(body, dict) and isinstance(body.get("error"), dict)
                  and body["error"].get("code") == "out_of_stock"):
                outcome.out_of_stock += 1
                outcome.latencies["out_of_stock"].append(latency)
            else:
                code = body["error"].get("code") if isinstance(body, dict) and isinstance(
                    body.get("error"), dict) else "?"
                outcome.other[f"http {r.status_code} {code}"] += 1

    def worker() -> None:
        session = requests.Session()
        try:
            start.wait()
            while True:
                try:
                    buyer = todo.get_nowait()
                except queue.Empty:
                    return
                buy(session, buyer)
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:  # a crash in a client is reported, never silently dropped
            with lock:
                outcome.other[f"crash:{type(exc).__name__}:{exc}"[:120]] += 1
        finally:
            session.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return outcome, time.perf_counter() - t0


def database_checks(product_id: int, buyers: list[Buyer], outcome: Outcome, secrets: int) -> list[str]:
    """What the database says after the race: one sold secret per delivered order, wallets, ledger invariants."""
    from sqlalchemy import func, select

    from app.catalog.models import CardSecret
    from app.extensions import db
    from app.ledger.invariants import check_ledger
    from app.ledger.service import agent_balances
    from app.orders.models import Order

    problems = [f"ledger: {line}" for line in check_ledger()]
    sold = db.session.execute(select(CardSecret.id, CardSecret.order_id, CardSecret.status)
                              .where(CardSecret.product_id == product_id)).all()
    by_status = Counter(row.status for row in sold)
    if by_status.get("sold", 0) != len(outcome.wins) or by_status.get("available", 0) != secrets - len(outcome.wins):
        problems.append(f"card secrets by status {dict(by_status)}, expected {len(outcome.wins)} sold of {secrets}")
    per_order = Counter(row.order_id for row in sold if row.status == "sold")
    if any(n != 1 for n in per_order.values()) or None in per_order:
        problems.append(f"sold secrets per order not all 1: {dict(per_order.most_common(3))}")
    delivered = dict(db.session.execute(select(Order.order_no, Order.id).where(
        Order.product_id == product_id, Order.status == "delivered")).all())
    if set(delivered) != set(outcome.wins):
        problems.append(f"{len(delivered)} delivered orders in the database, {len(outcome.wins)} winners answered")
    if set(per_order) != set(delivered.values()):
        problems.append("the sold secrets' orders are not exactly the delivered orders")
    others = db.session.scalar(select(func.count()).select_from(Order).where(
        Order.product_id == product_id, Order.status.not_in(("delivered", "failed", "refunded", "closed"))))
    if others:
        problems.append(f"{others} orders of the product neither delivered nor cleanly ended")
    balances = [START_BALANCE - agent_balances(b.agent_id)["wallet"] for b in buyers]
    if sum(balances) != len(outcome.wins) * UNIT_PRICE or sorted(set(balances)) not in (
            [0], [UNIT_PRICE], [0, UNIT_PRICE]) or sum(1 for b in balances if b) != len(outcome.wins):
        problems.append(f"wallets fell by {sum(balances)} fen over {sum(1 for b in balances if b)} buyers, "
                        f"expected {len(outcome.wins)} x {UNIT_PRICE}")
    db.session.remove()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buyers", type=int, default=1000, help="resellers, each buying once (default 1000)")
    parser.add_argument("--secrets", type=int, default=100, help="secrets of the one product (default 100)")
    parser.add_argument("--threads", type=int, default=64, help="client threads racing (default 64)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class (default sync)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="gunicorn --threads (default 1)")
    args = parser.parse_args(argv)
    if args.buyers < 1 or args.secrets < 1 or args.threads < 1 or args.workers < 1:
        parser.error("--buyers, --secrets, --threads and --workers must be positive")

    url = database_url()
    t_setup = time.perf_counter()
    recreate_database(url)
    migrate(url)
    app = make_app(url)
    from app.extensions import db

    with app.app_context():
        product_id, buyers = build_data(app, args.buyers, args.secrets)
        db.session.remove()
    print(f"bench database: {url.rsplit('@', 1)[-1]} (recreated); setup: {len(buyers)} buyers with wallets and API "
          f"keys, 1 card product with {args.secrets} secrets, {time.perf_counter() - t_setup:.1f} s", flush=True)

    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kameng-bench-race-{os.getpid()}.log"
    server = Gunicorn(args.workers, log_path, env={"OPENAPI_RATE_LIMIT": "100000000 per minute"},
                      worker_class=args.worker_class, threads=args.threads_per_worker)
    with server:
        print(f"gunicorn: {server.description} on {server.base_url} (log {log_path}); {args.threads} client threads",
              flush=True)
        outcome, elapsed = race(server.base_url, buyers, product_id, min(args.threads, len(buyers)))

    with app.app_context():
        problems = database_checks(product_id, buyers, outcome, args.secrets)
    all_secrets = [s for order_secrets in outcome.wins.values() for s in order_secrets]
    other = sum(outcome.other.values())
    checks = [
        (f"winners: {len(outcome.wins)} (expected {min(args.secrets, args.buyers)})",
         len(outcome.wins) == min(args.secrets, args.buyers)),
        (f"each win delivered with one secret ({len(outcome.bad_wins)} not: {outcome.bad_wins[:3]})",
         not outcome.bad_wins),
        (f"secrets delivered distinct: {len(set(all_secrets))} of {len(all_secrets)}",
         len(set(all_secrets)) == len(all_secrets)),
        (f"out-of-stock answers: {outcome.out_of_stock} (expected {max(0, args.buyers - args.secrets)})",
         outcome.out_of_stock == max(0, args.buyers - args.secrets)),
        (f"other answers: {other} {dict(outcome.other) if other else ''}".rstrip(), other == 0),
        (f"5xx answers: {outcome.server_errors}", outcome.server_errors == 0),
        (f"database and ledger: {'clean' if not problems else '; '.join(problems[:5])}", not problems),
    ]
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}", flush=True)
    print(f"race: {len(buyers)} purchases in {elapsed:.2f} s ({len(buyers) / elapsed:.0f} answers/s)", flush=True)
    for kind, values in outcome.latencies.items():
        if values:
            values.sort()
            print(f"  {kind:<12} answer p50 {percentile(values, 50) * 1000:7.1f} ms   "
                  f"p99 {percentile(values, 99) * 1000:7.1f} ms   (n={len(values)})", flush=True)
    print(f"headline: race {args.buyers} buyers / {args.secrets} secrets: {len(outcome.wins)} winners, "
          f"{outcome.out_of_stock} out-of-stock, {other} other, {outcome.server_errors} 5xx, "
          f"ledger {'clean' if not problems else 'NOT clean'}, {elapsed:.1f} s", flush=True)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())

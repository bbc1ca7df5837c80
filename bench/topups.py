"""Direct top-ups (直充) end to end on PostgreSQL + Redis: payment → real RQ worker processes → upstream → delivered.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench REDIS_URL=redis://127.0.0.1:6379/5 \\
        .venv/bin/python bench/topups.py --orders 1000 --workers 4 [--latency-ms 50] [--threads 4]

It DROPS and recreates the bench database (its name must contain "bench"), migrates it with Alembic, and FLUSHES
the Redis database of REDIS_URL (required: the bench never guesses one to flush). Then it builds its own data: a
supplier simulator (`flask kameng supplier-sim`, a separate process on a free port, answering after
--latency-ms) connected as a supplier, a direct product mapped to it, a commissioned parent agent and one buyer
agent per paying thread with a big wallet.

It starts W real worker processes (`flask kameng worker --no-cron --queues high`, the production command), warms
them up with a few orders, then pays N direct orders from the wallets through the service
(`place_wallet_order`, then the outbox dispatch a request does after its commit), as fast as --threads threads
can, and waits until every order is final. All N are paid at once, so the payment → success times include the
wait in the queue; the throughput line is what the workers sustain.

Per order: payment (orders.paid_at, in the paying transaction) → success (orders.delivered_at, in the worker's
transaction). Prints p50/p99 in ms, the totals (delivered / failed / other), the ledger check, and LAST the
completed orders per second: N / (last delivery - first payment).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    database_url,
    free_port,
    make_app,
    migrate,
    percentile,
    recreate_database,
)

FLASK = str(Path(sys.executable).parent / "flask")
SIM_KEY = "bench-supplier-secret-0123456789"
SIM_APP_KEY = "kameng-bench"
CODE = "CMCC-10"  # the simulator's ¥10 phone credit (price 985 fen, unlimited stock)
ACCOUNT = "13800138000"
FACE_PRICE = 1000
COST = 980
DISCOUNT_BP = 9500
START_BALANCE = 10 ** 12  # fen: never the limiting factor
WARMUP_PER_WORKER = 5
FINAL = ("delivered", "failed", "refunded")
# Without progress for this long, stop waiting and report what is left as "other".
STALL_SECONDS = 60


def child_env(db_url: str, redis_url: str) -> dict[str, str]:
    """The environment of the worker and simulator processes: this database and Redis, the schema as migrated."""
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_url, FAB_CREATE_DB="False",
               FAB_UPDATE_PERMS="False", PYTHONUNBUFFERED="1")
    env.pop("PUBLIC_BASE_URL", None)  # no callbacks: the submit's answer decides (the simulator credits at once)
    return env


class Processes:
    """Child processes started by this bench, each stopped by its own pid (SIGTERM: RQ's warm shutdown)."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(f"/tmp/kameng-bench-topups-{name}.log", "w")  # noqa: SIM115 (closed in stop())
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {log.name}")

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.procs.clear()


def wait_until(condition, timeout: float, what: str, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        procs.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def simulator_ready(port: int) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/_sim/state", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def build_data(app, sim_url: str, buyers: int) -> tuple[int, list[int]]:
    """The supplier at the simulator, a direct product mapped to it, a parent (5% direct commission) and its
    buyers. Returns (product id, buyer agent ids)."""
    from app import crypto
    from app.agents import service as agents
    from app.agents.models import Tier
    from app.catalog import service as catalog
    from app.catalog.models import Category, Product
    from app.extensions import db
    from app.ledger import service as ledger
    from app.suppliers.models import SupplierProduct

    ledger.ensure_platform_accounts()
    parent_tier = Tier(name="bench-总代", rank=40, discount_bp=9000, may_recruit=True, may_withdraw=True,
                       direct_commission_bp=500, settle_days=1)
    buyer_tier = Tier(name="bench-代理", rank=10, discount_bp=DISCOUNT_BP, settle_days=1)
    category = Category(name="bench-话费直充")
    db.session.add_all([parent_tier, buyer_tier, category])
    db.session.flush()
    product = Product(name="bench 中国移动话费 10 元 直充", category_id=category.id,
                      supplier_id=catalog.platform_supplier().id, kind="direct", face_price=FACE_PRICE, cost=COST,
                      max_per_order=10, low_stock_threshold=0)
    db.session.add(product)
    supplier = catalog.create_supplier("bench 上游模拟器", 0)
    supplier.protocol = "simulator"
    supplier.endpoint = sim_url
    supplier.app_key = SIM_APP_KEY
    supplier.secret_enc = crypto.encrypt(SIM_KEY)
    supplier.priority = 1
    supplier.timeout_seconds = 10
    supplier.balance = None  # unknown: the upstream refuses what it cannot fund
    db.session.flush()
    db.session.add(SupplierProduct(supplier_id=supplier.id, product_id=product.id, upstream_code=CODE, cost=COST,
                                   priority=1, active=True))
    parent = agents.create_agent("bench-parent", parent_tier.id)
    db.session.flush()
    buyer_ids = []
    for i in range(buyers):
        agent = agents.create_agent(f"bench-buyer-{i + 1:02d}", buyer_tier.id, parent.id)
        db.session.flush()
        ledger.post_journal(f"bench:fund:{agent.id}", "adjustment", [
            ledger.Line(ledger.agent_account_code(agent.id, "wallet"), START_BALANCE),
            ledger.Line("platform:adjustments", -START_BALANCE)], memo="bench funding")
        buyer_ids.append(agent.id)
    db.session.commit()
    return product.id, buyer_ids


def pay(app, buyer_ids: list[int], product_id: int, count: int, tag: str) -> tuple[list[str], Counter, float]:
    """Pay `count` direct orders from the buyers' wallets, one thread per buyer, as fast as they go.
    Returns (out_trade_nos paid, errors, seconds)."""
    from app.errors import KamengError
    from app.extensions import db
    from app.orders.service import place_wallet_order
    from app.outbox.service import dispatch_due

    paid: list[str] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    threads = len(buyer_ids)
    barrier = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        quota = count // threads + (1 if i < count % threads else 0)
        mine, failed = [], Counter()
        with app.app_context():
            try:
                barrier.wait()
                for _ in range(quota):
                    out_trade_no = f"{tag}-{uuid.uuid4().hex[:20]}"
                    try:
                        place_wallet_order(buyer_ids[i], product_id, 1, out_trade_no=out_trade_no,
                                           account=ACCOUNT)
                    except KamengError as exc:
                        failed[type(exc).__name__] += 1
                        continue
                    dispatch_due()  # what a request does after its commit: the recharge job goes to RQ
                    mine.append(out_trade_no)
            except Exception as exc:  # reported, never silently dropped
                failed[f"crash:{type(exc).__name__}:{exc}"[:120]] += 1
            finally:
                db.session.remove()
                with lock:
                    paid.extend(mine)
                    errors.update(failed)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in workers:
        t.join()
    return paid, errors, time.perf_counter() - t0


def statuses(app, tag: str) -> Counter:
    from sqlalchemy import func, select

    from app.extensions import db
    from app.orders.models import Order

    with app.app_context():
        rows = db.session.execute(select(Order.status, func.count()).where(Order.out_trade_no.like(f"{tag}-%"))
                                  .group_by(Order.status)).all()
        db.session.remove()
    return Counter(dict(rows))


def wait_final(app, tag: str, expected: int, procs: Processes) -> Counter:
    """Until every order of the batch is final, or nothing moved for STALL_SECONDS."""
    last_done, last_change = -1, time.monotonic()
    while True:
        counts = statuses(app, tag)
        done = sum(counts[s] for s in FINAL)
        if done >= expected:
            return counts
        if done != last_done:
            last_done, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            print(f"  no progress for {STALL_SECONDS} s: {dict(counts)}", flush=True)
            return counts
        procs.check_alive()
        time.sleep(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000, help="direct orders to pay and measure (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="RQ worker processes on queue high (default 2)")
    parser.add_argument("--latency-ms", type=int, default=50, help="the upstream's answer delay (default 50)")
    parser.add_argument("--threads", type=int, default=4, help="paying threads, one buyer each (default 4)")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.workers < 1 or args.threads < 1 or args.latency_ms < 0:
        parser.error("--orders, --workers and --threads must be at least 1, --latency-ms at least 0")
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        raise SystemExit("REDIS_URL is required (its database is flushed), e.g. redis://127.0.0.1:6379/5")

    url = database_url()
    t_setup = time.perf_counter()
    print(f"bench database: {url.rsplit('@', 1)[-1]} (recreated); redis: {redis_url.rsplit('@', 1)[-1]} "
          f"(flushed)", flush=True)
    recreate_database(url)
    migrate(url)
    from redis import Redis

    Redis.from_url(redis_url).flushdb()
    app = make_app(url, pool_size=args.threads + 2, REDIS_URL=redis_url)

    procs = Processes()
    try:
        env = child_env(url, redis_url)
        sim_port = free_port()
        procs.start("supplier-sim", [FLASK, "--app", "run", "kameng", "supplier-sim", "--port", str(sim_port),
                                     "--key", SIM_KEY, "--app-key", SIM_APP_KEY,
                                     "--latency-ms", str(args.latency_ms), "--balance", str(10 ** 12)], env)
        for i in range(args.workers):
            procs.start(f"worker{i + 1}", [FLASK, "--app", "run", "kameng", "worker", "--no-cron",
                                           "--queues", "high"], env)
        with app.app_context():
            product_id, buyer_ids = build_data(app, f"http://127.0.0.1:{sim_port}", args.threads)
        wait_until(lambda: simulator_ready(sim_port), 180, "the supplier simulator", procs)
        from rq import Worker

        connection = Redis.from_url(redis_url)
        wait_until(lambda: len(Worker.all(connection=connection)) >= args.workers, 180,
                   f"{args.workers} RQ workers", procs)
        print(f"setup: simulator on 127.0.0.1:{sim_port} ({args.latency_ms} ms), {args.workers} worker "
              f"processes, {args.threads} paying threads, {time.perf_counter() - t_setup:.1f} s", flush=True)

        # Warm-up: each worker's first jobs open connections and fill caches; not measured.
        warm = WARMUP_PER_WORKER * args.workers
        paid, errors, _ = pay(app, buyer_ids, product_id, warm, "warm")
        if errors:
            raise SystemExit(f"warm-up payments failed: {dict(errors)}")
        wait_final(app, "warm", len(paid), procs)

        paid, errors, pay_seconds = pay(app, buyer_ids, product_id, args.orders, "bench")
        print(f"paid {len(paid)} direct orders in {pay_seconds:.1f} s ({len(paid) / pay_seconds:.0f}/s)"
              + (f", errors: {dict(errors)}" if errors else ""), flush=True)
        counts = wait_final(app, "bench", len(paid), procs)
    finally:
        procs.stop()

    return report(app, args, paid, errors, counts)


def report(app, args, paid: list[str], errors: Counter, counts: Counter) -> int:
    from sqlalchemy import select

    from app.extensions import db
    from app.ledger.invariants import check_ledger
    from app.orders.models import Order

    with app.app_context():
        rows = db.session.execute(select(Order.paid_at, Order.delivered_at).where(
            Order.out_trade_no.like("bench-%"))).all()
        problems = check_ledger()
        db.session.remove()
    latencies = sorted((d - p).total_seconds() * 1000 for p, d in rows if d is not None)
    first_paid = min(p for p, _ in rows)
    last_delivered = max((d for _, d in rows if d is not None), default=None)
    delivered = counts["delivered"]
    failed = counts["failed"] + counts["refunded"]
    other = sum(counts.values()) - delivered - failed
    print(f"payment → success: p50 {percentile(latencies, 50):.0f} ms   p99 {percentile(latencies, 99):.0f} ms"
          f"   (n={len(latencies)}, workers={args.workers}, upstream latency {args.latency_ms} ms)")
    print(f"orders: {delivered} delivered / {failed} failed / {other} other"
          + (f"   (payment errors: {dict(errors)})" if errors else ""))
    if problems:
        print("ledger invariants: BROKEN")
        for p in problems:
            print("  " + p)
    else:
        print("ledger invariants: hold")
    span = (last_delivered - first_paid).total_seconds() if last_delivered else 0.0
    rate = len(paid) / span if span > 0 else 0.0
    print(f"completed: {rate:.1f} orders/s ({len(paid)} orders, first payment → last delivery {span:.1f} s)")
    ok = not problems and not errors and delivered == len(paid) == args.orders
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Signed Open API purchases per second over real HTTP, beside PostgreSQL's own pgbench in the same run.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_openapi .venv/bin/python bench/openapi.py \
        [--concurrency 1,8,16,32] [--duration 5] [--workers 4 --worker-class sync --threads 1]

First the yardstick: PostgreSQL's pgbench (on PATH, else /usr/lib/postgresql/*/bin) initialises `-s 16` into its
own database, DATABASE_URL's name + "_pgbench" (recreated, dropped afterwards), and runs the built-in tpcb-like
script at 16 clients (`-c 16 -j 2 -T <duration>`); its "tps = ..." is parsed.

Then the purchases. gunicorn serves run:app with the worker model and count given (default: 4 sync workers, what the
README deploys with `gunicorn -w 4`). It DROPS and recreates the bench database (its name must contain "bench"),
migrates it with Alembic (FAB_CREATE_DB=False), starts FAB once so the roles exist, then builds one agent per client
thread (each with a big wallet and its own API key from app.openapi.service.create_key) and card products whose
stock is imported through app.catalog.cards (create_import / run_import) and topped up before each level.

REDIS_URL is read like the app reads it: when set, the served app keeps rate-limit counters in Redis and leaves
jobs (the rollup fold, callbacks) to workers; unset, jobs run inline after each commit. Nonces are always rows of
the api_nonce table. The per-key rate limit is raised so it is not what we measure.

Each client thread is one reseller (LightClient: http.client, signed with app.openapi.signing), sending
POST /open/v1/orders (a fresh out_trade_no each time). A 201 is a success; anything else is counted by
status and error code. For each concurrency it prints orders/s and p50/p99 latency in ms; then the ledger
check and both figures.

Then the floor (skipped with --no-floor): the same clients at the headline's concurrency against bench/bare_app.py
(a bare Flask endpoint that parses the JSON body and answers 201) under the same gunicorn worker model and count, with
its CPU per request; and the ceiling it implies: the orders/s the cores busy in the purchase run would allow if the
web workers spent no more per purchase than the bare endpoint per request, while PostgreSQL, Redis and the load
generator spent what they spent per purchase in this run, as a multiple of pgbench. LAST the headline line:
"headline: openapi c=16 X orders/s = R × pgbench tpcb-like c=16 (Y tps); p99 Z ms".
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Before anything imports config (it reads DATABASE_URL once), and before bench/common sets its default.
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/kameng_bench_openapi")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CpuMeter,
    Gunicorn,
    Http,
    ceiling,
    database_url,
    ensure_stock,
    find_pgbench,
    make_app,
    migrate,
    percentile,
    recreate_database,
)

FACE_PRICE = 1000  # ¥10.00
COST = 800
DISCOUNT_BP = 9500
UNIT_PRICE = FACE_PRICE * DISCOUNT_BP // 10000
START_BALANCE = 10 ** 12  # fen: never the limiting factor
WARMUP_SECONDS = 1.0
RATE_CAP = 1500  # orders/s upper bound used to size stock before each level


@dataclass
class Reseller:
    agent_id: int
    app_key: str
    secret: str
    product_id: int


@dataclass
class Result:
    concurrency: int
    ok: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def line(self) -> str:
        lat = sorted(self.latencies)
        errors = ", ".join(f"{k}={v}" for k, v in self.errors.most_common()) or "0"
        return (f"openapi c={self.concurrency:<3} {self.rate:8.1f} orders/s   p50 {percentile(lat, 50) * 1000:7.2f} ms"
                f"   p99 {percentile(lat, 99) * 1000:7.2f} ms   (n={self.ok}, {self.elapsed:.1f} s, errors: {errors})")


# ---------------------------------------------------------------------------------------------------------------
# Data


def build_data(app, resellers: int, products: int) -> list[Reseller]:
    from app.agents import service as agents
    from app.agents.models import Tier
    from app.catalog import service as catalog
    from app.catalog.models import Category, Product
    from app.extensions import db
    from app.ledger import service as ledger
    from app.openapi.service import create_key

    app.appbuilder.sm.create_db()  # FAB's built-in roles and FAB_ROLES
    ledger.ensure_platform_accounts()
    tier = Tier(name="bench-api-总代", rank=40, discount_bp=DISCOUNT_BP, may_recruit=True, may_withdraw=True,
                min_withdrawal=10000, withdrawal_fee_bp=0, direct_commission_bp=0, indirect_commission_bp=0,
                daily_limit=0, settle_days=1,
                # a bench reseller buys far past a real one's day: the tier's risk limits (editable) are not measured
                risk_order_limit=10 ** 12, risk_daily_limit=10 ** 12)
    category = Category(name="bench-api-游戏点卡")
    db.session.add_all([tier, category])
    db.session.flush()
    supplier = catalog.platform_supplier()
    product_ids = []
    for i in range(products):
        product = Product(name=f"bench api 点卡 {i + 1} 号 10元", category_id=category.id, supplier_id=supplier.id,
                          kind="card", face_price=FACE_PRICE, cost=COST, max_per_order=10, low_stock_threshold=1)
        db.session.add(product)
        db.session.flush()
        product_ids.append(product.id)
    db.session.commit()

    result = []
    for i in range(resellers):
        agent = agents.create_agent(f"api-bench{i + 1:02d}", tier.id, None)
        ledger.post_journal(f"bench:fund:{agent.id}", "adjustment", [
            ledger.Line(ledger.agent_account_code(agent.id, "wallet"), START_BALANCE),
            ledger.Line("platform:adjustments", -START_BALANCE)], memo="bench funding")
        db.session.commit()
        key, secret = create_key(agent.id, "bench")
        result.append(Reseller(agent.id, key.app_key, secret, product_ids[i % len(product_ids)]))
    return result




# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL's own yardstick, in the same run on the same machine


def run_pgbench(url: str, clients: int, seconds: float, scale: int) -> float:
    """`pgbench -i -s SCALE` into its own (recreated) database, then tpcb-like at `clients`; returns its tps."""
    import re

    import psycopg

    binary = find_pgbench()
    base, name = url.rsplit("/", 1)
    pg_url = f"{base}/{name.split('?', 1)[0]}_pgbench"
    recreate_database(pg_url)
    t = time.perf_counter()
    init = subprocess.run([binary, "-i", "-q", "-s", str(scale), pg_url], capture_output=True, text=True)
    if init.returncode:
        raise SystemExit(f"pgbench -i failed ({init.returncode}):\n{init.stderr[-2000:]}")
    print(f"pgbench: {binary}, -i -s {scale} into {pg_url.rsplit('/', 1)[-1]} ({time.perf_counter() - t:.1f} s)",
          flush=True)
    meter = CpuMeter()
    meter.start()
    run = subprocess.run([binary, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(max(1, round(seconds))),
                          pg_url], capture_output=True, text=True)
    meter.stop()
    match = re.search(r"^tps = ([0-9.]+)", run.stdout, re.MULTILINE)
    if run.returncode or not match:
        raise SystemExit(f"pgbench run failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    latency = re.search(r"^latency average = ([0-9.]+) ms", run.stdout, re.MULTILINE)
    tps = float(match.group(1))
    print(f"pgbench tpcb-like c={clients} -j {min(clients, 2)} -T {max(1, round(seconds))}: {tps:.0f} tps"
          + (f" (latency average {latency.group(1)} ms)" if latency else ""), flush=True)
    transactions = re.search(r"^number of transactions actually processed: ([0-9]+)", run.stdout, re.MULTILINE)
    if transactions:
        per = {side: 1000 * spent / int(transactions.group(1)) for side, spent in meter.spent.items()}
        print(f"  cpu ms per pgbench transaction: postgres {per['postgres']:.2f}, pgbench {per['client']:.2f}",
              flush=True)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:  # ~250 MB we need no more
        conn.execute(f'DROP DATABASE IF EXISTS "{pg_url.rsplit("/", 1)[-1]}" WITH (FORCE)')
    return tps


# ---------------------------------------------------------------------------------------------------------------
# Load: each thread is one reseller with its own key and session; shared start; runs for a duration.


class LightClient:
    """One reseller's signed POST /open/v1/orders (bench/common.Http: requests cost the load generator 0.9 ms of CPU
    per order on the server's cores, this 0.3), signed with app.openapi.signing like every client."""

    def __init__(self, base_url: str, reseller: Reseller) -> None:
        from app.openapi.signing import signed_headers

        self.http = Http(base_url)
        self.reseller = reseller
        self._sign = signed_headers

    def create_order(self, out_trade_no: str) -> bool | str:
        body = json.dumps({"out_trade_no": out_trade_no, "product_id": self.reseller.product_id,
                           "quantity": 1}).encode()
        headers = self._sign(self.reseller.app_key, self.reseller.secret, "POST", "/open/v1/orders", body)
        headers["Content-Type"] = "application/json"
        try:
            answer = self.http.post("/open/v1/orders", body, headers)
        except (OSError, http.client.HTTPException) as exc:
            return f"net:{type(exc).__name__}"
        if answer.status_code == 201:
            return True
        try:
            code = answer.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "?"
        return f"http {answer.status_code} {code}"

    def close(self) -> None:
        self.http.close()


def drive(base_url: str, resellers: list[Reseller], duration: float, meter: CpuMeter | None = None) -> Result:
    concurrency = len(resellers)
    result = Result(concurrency)
    lock = threading.Lock()
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()
    state = {"deadline": 0.0, "last": 0.0}
    run_id = uuid.uuid4().hex[:8]

    def worker(i: int) -> None:
        client = LightClient(base_url, resellers[i])
        latencies: list[float] = []
        errors: Counter = Counter()
        ok = 0
        seq = 0

        def call() -> bool | str:
            nonlocal seq
            seq += 1
            return client.create_order(f"b{run_id}-{i}-{seq}")

        try:
            warm_until = time.perf_counter() + WARMUP_SECONDS
            while time.perf_counter() < warm_until:
                outcome = call()
                if outcome is not True:
                    errors[f"warm-up {outcome}"] += 1
            ready.wait()
            go.wait()
            while time.perf_counter() < state["deadline"]:
                t = time.perf_counter()
                outcome = call()
                if outcome is True:
                    latencies.append(time.perf_counter() - t)
                    ok += 1
                else:
                    errors[outcome] += 1
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:  # a crash in a worker is reported, never silently dropped
            errors[f"crash:{type(exc).__name__}:{exc}"[:120]] += 1
            ready.abort()
        finally:
            end = time.perf_counter()
            client.close()
            with lock:
                result.ok += ok
                result.latencies.extend(latencies)
                result.errors.update(errors)
                state["last"] = max(state["last"], end)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise SystemExit(f"c={concurrency}: a client failed during warm-up: {dict(result.errors)}") from None
    if meter is not None:
        meter.start()
    t0 = time.perf_counter()
    state["deadline"] = t0 + duration
    go.set()
    for t in threads:
        t.join()
    result.elapsed = state["last"] - t0
    if meter is not None:
        meter.stop()
    return result


# ---------------------------------------------------------------------------------------------------------------
# The floor under the purchases: what the HTTP layer alone costs, and what that leaves possible.


def measure_floor(args, resellers: list[Reseller]) -> tuple[Result, CpuMeter]:
    """The same load generator against bench/bare_app.py (parse the JSON body, answer 201) under the same gunicorn
    worker model and count, at the headline's concurrency: the least a request can cost here."""
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kameng-bench-openapi-bare-{os.getpid()}.log"
    bare = Gunicorn(args.workers, log_path, worker_class=args.worker_class, threads=args.threads,
                    app_spec="bare_app:app", deployed=False)
    with bare:
        meter = CpuMeter(bare.proc.pid)
        res = drive(bare.base_url, resellers, args.duration, meter)
    units = res.ok + sum(res.errors.values())
    lat = sorted(res.latencies)
    print(f"floor: bench/bare_app.py under {bare.description}, c={res.concurrency}: {res.rate:.0f} requests/s, "
          f"p50 {percentile(lat, 50) * 1000:.2f} ms, p99 {percentile(lat, 99) * 1000:.2f} ms; "
          f"{meter.per_unit(units, 'request')}", flush=True)
    if res.errors:
        raise SystemExit(f"the bare endpoint answered errors: {dict(res.errors)}")
    return res, meter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency level (default 5)")
    parser.add_argument("--concurrency", default="16",
                        help="comma-separated levels, e.g. 1,8,16,32 (default 16; the headline needs 16)")
    parser.add_argument("--products", type=int, default=4, help="card products the resellers spread over")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4, as the README deploys)")
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class (default sync)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (default 1)")
    parser.add_argument("--pgbench-clients", type=int, default=16, help="pgbench tpcb-like clients (default 16)")
    parser.add_argument("--pgbench-seconds", type=float, default=None, help="pgbench -T (default: --duration)")
    parser.add_argument("--pgbench-scale", type=int, default=16, help="pgbench -i -s (default 16)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the HTTP floor (bench/bare_app.py under the same gunicorn) and the ceiling line")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or any(c < 1 for c in levels) or args.duration <= 0 or args.workers < 1 or args.threads < 1:
        parser.error("bad --concurrency, --duration, --workers or --threads")

    url = database_url()
    # PostgreSQL first, on a quiet machine: the yardstick the purchases are compared with.
    pg_tps = run_pgbench(url, args.pgbench_clients, args.pgbench_seconds or args.duration, args.pgbench_scale)

    t_setup = time.perf_counter()
    redis = os.environ.get("REDIS_URL")
    print(f"bench database: {url.rsplit('@', 1)[-1]} (recreated); "
          f"{'Redis ' + redis.rsplit('@', 1)[-1] if redis else 'no Redis: jobs inline after each commit'}",
          flush=True)
    recreate_database(url)
    migrate(url)
    app = make_app(url)
    from app.extensions import db

    with app.app_context():
        resellers = build_data(app, max(levels), args.products)
        product_ids = sorted({r.product_id for r in resellers})
        db.session.remove()
    print(f"setup: {len(resellers)} agents with API keys, {len(product_ids)} card products, "
          f"{time.perf_counter() - t_setup:.1f} s", flush=True)

    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kameng-bench-openapi-{os.getpid()}.log"
    # The per-key limit is not what we measure.
    server = Gunicorn(args.workers, log_path, env={"OPENAPI_RATE_LIMIT": "100000000 per minute"},
                      worker_class=args.worker_class, threads=args.threads)
    results: list[Result] = []
    meters: dict[int, CpuMeter] = {}
    with server:
        print(f"gunicorn: {server.description} on {server.base_url} (log {log_path})", flush=True)
        for c in levels:
            with app.app_context():
                t = time.perf_counter()
                need = int(RATE_CAP * (args.duration + WARMUP_SECONDS) / len(product_ids) * 1.2) + c
                ensure_stock(product_ids, need)
                db.session.remove()
                stock_s = time.perf_counter() - t
            meter = CpuMeter(server.proc.pid)
            res = drive(server.base_url, resellers[:c], args.duration, meter)
            results.append(res)
            meters[c] = meter
            print(res.line() + (f"   [stock top-up {stock_s:.1f} s]" if stock_s > 0.5 else ""), flush=True)
            print(f"  c={c} {meter.per_unit(res.ok + sum(res.errors.values()))}", flush=True)

    with app.app_context():
        from sqlalchemy import func, select

        from app.ledger.invariants import check_ledger
        from app.ledger.service import agent_balances
        from app.orders.models import Order

        problems = check_ledger()
        orders, amount = db.session.execute(
            select(func.count(), func.coalesce(func.sum(Order.amount), 0)).where(Order.status == "delivered")).one()
        spent = sum(START_BALANCE - agent_balances(r.agent_id)["wallet"] for r in resellers)
        if orders and amount != orders * UNIT_PRICE:
            problems.append(f"delivered orders total {amount} fen, expected {orders} x {UNIT_PRICE}")
        if spent != amount:
            problems.append(f"wallets fell by {spent} fen but delivered orders total {amount} fen")
        db.session.remove()
    if problems:
        print("ledger check: FAILED", flush=True)
        for line in problems:
            print(f"  {line}", flush=True)
    else:
        print(f"ledger check: ok ({orders} delivered orders, wallets down exactly {amount} fen)", flush=True)

    # The headline compares like with like: 16 clients each side (else the level nearest to pgbench's clients).
    best = min(results, key=lambda r: (abs(r.concurrency - args.pgbench_clients), -r.rate))
    lat = sorted(best.latencies)
    ratio = best.rate / pg_tps if pg_tps else float("nan")
    if not args.no_floor:
        bare, bare_meter = measure_floor(args, resellers[:best.concurrency])
        most, how = ceiling(meters[best.concurrency], best.ok + sum(best.errors.values()), best.elapsed, bare_meter,
                            bare.ok + sum(bare.errors.values()))
        print(f"ceiling (c={best.concurrency}, per order): {how} = {most / pg_tps if pg_tps else 0:.3f} × pgbench; "
              f"measured {best.rate:.0f} = {best.rate / most if most else 0:.2f} of that", flush=True)
    print(f"gunicorn {server.description}; pgbench tpcb-like c={args.pgbench_clients} {pg_tps:.0f} tps; "
          f"openapi c={best.concurrency} {best.rate:.1f} orders/s, p50 {percentile(lat, 50) * 1000:.1f} ms, "
          f"p99 {percentile(lat, 99) * 1000:.1f} ms", flush=True)
    print(f"headline: openapi c={best.concurrency} {best.rate:.0f} orders/s = {ratio:.3f} × pgbench tpcb-like "
          f"c={args.pgbench_clients} ({pg_tps:.0f} tps); p99 {percentile(lat, 99) * 1000:.0f} ms", flush=True)
    return 1 if problems or any(r.errors for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())

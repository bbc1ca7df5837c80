"""Storefront card orders paid by notification over HTTP: notification -> delivered latency and notifications/s.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_checkout REDIS_URL=redis://127.0.0.1:6379/12 \\
        .venv/bin/python bench/checkout.py --orders 400 --concurrency 8 [--workers 4]

It DROPS and recreates the bench database (its name must contain "bench"), migrates it with Alembic, builds one card
product with --orders secrets (imported through app.catalog.cards) and enables the sandbox payment channel with a
fresh key (app.payments.service.save_channel, as `flask kameng demo --sandbox-key` does; no risk rules are
installed, as on a fresh install). gunicorn serves run:app (default 4 sync workers, like bench/openapi.py).

Rate limits raised for the served app, so they are not what we measure (every request comes from 127.0.0.1):
SHOP_ORDER_RATE_LIMIT (checkouts per address), NOTIFY_RATE_LIMIT (notifications per address) and
SHOP_LOOKUP_RATE_LIMIT (lookups per address). Risk control's limits are per buyer (contact, device): every order has
its own contact (a phone number of its own) and no device id. The lookup's per-order-number budget
(SHOP_LOOKUP_ORDER_FAILURES) is left as it is: a right password gives its try back.

1. Not timed: --orders storefront orders through POST /shop/api/orders (channel sandbox, quantity 1, each with its
   own phone and order password), --concurrency at a time.
2. Timed: --concurrency threads send the --orders payment notifications as fast as they can, each thread one order
   at a time: a form-encoded POST /pay/notify/sandbox (order_no, trade_no, amount, currency CNY, status SUCCESS,
   ts, nonce, sign = HMAC-SHA256(key, the sorted k=v joined by &)), answered "success"; right after the answer,
   POST /shop/api/lookup (order_no + password), repeated every 5 ms until it shows the order delivered with its
   secret. "Delivered" is the moment the confirming lookup was sent (the secret was readable then: today the
   notification delivers in its own transaction, so the first lookup confirms it); "in hand" is when that lookup's
   answer arrived (it includes the lookup's own password check).

Prints notifications/s (orders paid and confirmed delivered per second of the timed phase), notification answer,
notification -> delivered and -> in hand p50/p95/p99 in ms, the database check (every order delivered with one
secret, one payment each) and the ledger check. Then (skipped with --no-floor) the floor: the same notifications and
lookups sent to bench/bare_app.py under the same gunicorn worker model and count, with its CPU per paid order; and the
ceiling it implies: the notifications/s the cores busy in the timed phase would allow if the web workers spent no more
per paid order than the bare app, PostgreSQL, Redis and the load generator what they spent. LAST the headline line:
"headline: checkout notification->delivered p99 X ms at Y notifications/s (C=N)". Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import os
import queue
import secrets as pysecrets
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/kameng_bench_checkout")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CpuMeter,
    Gunicorn,
    Http,
    ceiling,
    database_url,
    ensure_stock,
    make_app,
    migrate,
    percentile,
    recreate_database,
)

FACE_PRICE = 1000  # ¥10.00, the storefront's public price
COST = 800
PASSWORD_PREFIX = "bench-pw-"
POLL_SECONDS = 0.005
DELIVERY_TIMEOUT = 30.0
UNLIMITED = "100000000 per minute"


@dataclass
class ShopOrder:
    order_no: str
    amount: int
    password: str


@dataclass
class Timings:
    notify: list[float] = field(default_factory=list)  # notification sent -> its answer
    delivered: list[float] = field(default_factory=list)  # notification sent -> confirming lookup sent
    in_hand: list[float] = field(default_factory=list)  # notification sent -> confirming lookup answered
    lookups: int = 0
    secrets: list[str] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


def build_data(app, orders: int) -> tuple[int, str]:
    from app.catalog import service as catalog
    from app.catalog.models import Category, Product
    from app.extensions import db
    from app.ledger import service as ledger
    from app.payments import service as payments

    app.appbuilder.sm.create_db()  # FAB's built-in roles and FAB_ROLES
    ledger.ensure_platform_accounts()
    category = Category(name="bench-shop-游戏点卡")
    db.session.add(category)
    db.session.flush()
    product = Product(name="bench shop 点卡 10元", category_id=category.id, supplier_id=catalog.platform_supplier().id,
                      kind="card", face_price=FACE_PRICE, cost=COST, max_per_order=10, low_stock_threshold=1)
    db.session.add(product)
    db.session.commit()
    product_id = product.id
    ensure_stock([product_id], orders)
    key = pysecrets.token_hex(16)
    payments.save_channel("sandbox", True, {"key": key})
    db.session.commit()
    return product_id, key


def run_threads(base_url: str, concurrency: int, work) -> float:
    """`concurrency` threads start together and run work(session) until it returns, each with its own connection
    (bench/common.Http); the wall time of the lot."""
    start = threading.Barrier(concurrency + 1)
    crashes: list[str] = []

    def worker() -> None:
        session = Http(base_url)
        try:
            start.wait()
            work(session)
        except BaseException as exc:  # a crash in a client is reported, never silently dropped
            crashes.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            session.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    if crashes:
        raise SystemExit(f"client threads crashed: {crashes[:3]}")
    return time.perf_counter() - t0


def create_orders(base_url: str, product_id: int, count: int, concurrency: int) -> list[ShopOrder]:
    created: list[ShopOrder] = []
    failures: Counter = Counter()
    numbers: queue.SimpleQueue[int] = queue.SimpleQueue()
    for n in range(count):
        numbers.put(n)
    lock = threading.Lock()

    def work(session) -> None:
        while True:
            try:
                n = numbers.get_nowait()
            except queue.Empty:
                return
            password = PASSWORD_PREFIX + pysecrets.token_hex(4)
            r = session.post_json("/shop/api/orders", {
                "product_id": product_id, "quantity": 1, "contact": f"139{n:08d}", "query_password": password,
                "channel": "sandbox"})
            with lock:
                if r.status_code == 201:
                    body = r.json()
                    created.append(ShopOrder(body["order_no"], body["amount"], password))
                else:
                    failures[f"http {r.status_code} {r.text[:80]}"] += 1

    elapsed = run_threads(base_url, concurrency, work)
    if failures:
        raise SystemExit(f"checkout failed for {sum(failures.values())} orders: {dict(failures.most_common(3))}")
    print(f"orders: {len(created)} storefront orders through POST /shop/api/orders in {elapsed:.1f} s "
          f"({len(created) / elapsed:.0f}/s, not timed)", flush=True)
    return created


def pay_all(base_url: str, key: str, orders: list[ShopOrder], concurrency: int) -> tuple[Timings, float]:
    from app.payments.channels import sandbox

    timings = Timings()
    lock = threading.Lock()
    todo: queue.SimpleQueue[ShopOrder] = queue.SimpleQueue()
    for order in orders:
        todo.put(order)

    def pay(session, order: ShopOrder) -> None:
        fields = {"order_no": order.order_no, "trade_no": "SBX" + pysecrets.token_hex(10), "amount": str(order.amount),
                  "currency": "CNY", "status": "SUCCESS", "ts": str(int(time.time())), "nonce": pysecrets.token_hex(8)}
        fields["sign"] = sandbox.sign(key, fields)
        t0 = time.perf_counter()
        r = session.post_form("/pay/notify/sandbox", fields)
        t_answer = time.perf_counter()
        if r.status_code != 200 or r.text != "success":
            with lock:
                timings.errors[f"notify http {r.status_code} {r.text[:60]}"] += 1
            return
        lookups = 0
        while True:
            t_lookup = time.perf_counter()
            lr = session.post_json("/shop/api/lookup", {"order_no": order.order_no,
                                                        "query_password": order.password})
            t_end = time.perf_counter()
            lookups += 1
            body = lr.json() if lr.status_code == 200 else {}
            if body.get("status") == "delivered" and body.get("card_secrets"):
                with lock:
                    timings.notify.append(t_answer - t0)
                    timings.delivered.append(t_lookup - t0)
                    timings.in_hand.append(t_end - t0)
                    timings.lookups += lookups
                    timings.secrets.extend(body["card_secrets"])
                return
            if lr.status_code != 200 or t_end - t0 > DELIVERY_TIMEOUT:
                with lock:
                    timings.errors[f"lookup http {lr.status_code} {body.get('status') or lr.text[:60]}"] += 1
                return
            time.sleep(POLL_SECONDS)

    def work(session) -> None:
        while True:
            try:
                order = todo.get_nowait()
            except queue.Empty:
                return
            pay(session, order)

    return timings, run_threads(base_url, concurrency, work)


def database_checks(product_id: int, orders: list[ShopOrder], timings: Timings) -> list[str]:
    from sqlalchemy import func, select

    from app.catalog.models import CardSecret
    from app.extensions import db
    from app.ledger.invariants import check_ledger
    from app.orders.models import Order
    from app.payments.models import Payment

    problems = [f"ledger: {line}" for line in check_ledger()]
    by_status = Counter(dict(db.session.execute(select(Order.status, func.count()).where(
        Order.product_id == product_id).group_by(Order.status)).all()))
    if by_status != Counter(delivered=len(orders)):
        problems.append(f"orders by status {dict(by_status)}, expected {len(orders)} delivered")
    payments = db.session.scalar(select(func.count()).select_from(Payment).where(Payment.status == "paid"))
    if payments != len(orders):
        problems.append(f"{payments} payments recorded for {len(orders)} orders")
    sold = Counter(db.session.scalars(select(CardSecret.order_id).where(
        CardSecret.product_id == product_id, CardSecret.status == "sold")).all())
    if len(sold) != len(orders) or any(n != 1 for n in sold.values()):
        problems.append(f"{sum(sold.values())} secrets sold over {len(sold)} orders, expected one for each of "
                        f"{len(orders)}")
    if len(set(timings.secrets)) != len(timings.secrets):
        problems.append("a secret was shown for two orders")
    db.session.remove()
    return problems


def ms(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=400, help="storefront orders to pay (default 400)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads sending notifications (default 8)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class (default sync)")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn --threads per worker (default 1)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the HTTP floor (bench/bare_app.py under the same gunicorn) and the ceiling line")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.concurrency < 1 or args.workers < 1 or args.threads < 1:
        parser.error("--orders, --concurrency, --workers and --threads must be positive")

    url = database_url()
    t_setup = time.perf_counter()
    recreate_database(url)
    migrate(url)
    app = make_app(url)
    from app.extensions import db

    with app.app_context():
        product_id, key = build_data(app, args.orders)
        db.session.remove()
    print(f"bench database: {url.rsplit('@', 1)[-1]} (recreated); setup: 1 card product with {args.orders} secrets, "
          f"sandbox channel on, {time.perf_counter() - t_setup:.1f} s", flush=True)

    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kameng-bench-checkout-{os.getpid()}.log"
    env = {"SHOP_ORDER_RATE_LIMIT": UNLIMITED, "NOTIFY_RATE_LIMIT": UNLIMITED, "SHOP_LOOKUP_RATE_LIMIT": UNLIMITED}
    server = Gunicorn(args.workers, log_path, env=env, worker_class=args.worker_class, threads=args.threads,
                      ready_path="/shop/api/products")
    with server:
        print(f"gunicorn: {server.description} on {server.base_url} (log {log_path}); "
              f"{args.concurrency} client threads", flush=True)
        orders = create_orders(server.base_url, product_id, args.orders, args.concurrency)
        meter = CpuMeter(server.proc.pid)
        meter.start()
        timings, elapsed = pay_all(server.base_url, key, orders, args.concurrency)
        meter.stop()

    floor = None
    if not args.no_floor:  # the same notifications and lookups answered by bench/bare_app.py
        bare = Gunicorn(args.workers, log_path.with_name(log_path.stem + "-bare.log"), worker_class=args.worker_class,
                        threads=args.threads, ready_path="/shop/api/products", app_spec="bare_app:app", deployed=False)
        with bare:
            bare_meter = CpuMeter(bare.proc.pid)
            bare_meter.start()
            bare_timings, bare_elapsed = pay_all(bare.base_url, key, orders, args.concurrency)
            bare_meter.stop()
        floor = (bare_timings, bare_elapsed, bare_meter)

    with app.app_context():
        problems = database_checks(product_id, orders, timings)
    done = len(timings.delivered)
    rate = done / elapsed if elapsed else 0.0
    errors = ", ".join(f"{k}={v}" for k, v in timings.errors.most_common(5)) or "0"
    print(f"paid: {done} of {len(orders)} orders delivered in {elapsed:.2f} s = {rate:.1f} notifications/s "
          f"(C={args.concurrency}; {timings.lookups / max(done, 1):.2f} lookups per order; errors: {errors})",
          flush=True)
    print(f"  {meter.per_unit(max(done, 1), 'paid order (notification + lookups)')}", flush=True)
    for name, values in (("notification answer      ", timings.notify),
                         ("notification -> delivered", timings.delivered),
                         ("notification -> in hand  ", timings.in_hand)):
        print(f"  {name}  p50 {ms(values, 50):7.1f} ms   p95 {ms(values, 95):7.1f} ms   p99 {ms(values, 99):7.1f} ms",
              flush=True)
    if floor is not None:
        bare_timings, bare_elapsed, bare_meter = floor
        bare_done = len(bare_timings.delivered)
        print(f"floor: bench/bare_app.py under {server.description}, C={args.concurrency}: "
              f"{bare_done / bare_elapsed:.0f} paid orders/s (errors: {sum(bare_timings.errors.values())}), "
              f"notification -> delivered p99 {ms(bare_timings.delivered, 99):.1f} ms; "
              f"{bare_meter.per_unit(max(bare_done, 1), 'paid order')}", flush=True)
        most, how = ceiling(meter, max(done, 1), elapsed, bare_meter, bare_done)
        print(f"ceiling (C={args.concurrency}, per paid order): {how} notifications; measured {rate:.0f} = "
              f"{rate / most if most else 0:.2f} of that", flush=True)
        if bare_timings.errors or bare_done != len(orders):
            problems.append(f"the bare app answered {dict(bare_timings.errors)}")
    if problems:
        print("database and ledger check: FAILED", flush=True)
        for line in problems[:10]:
            print(f"  {line}", flush=True)
    else:
        print(f"database and ledger check: ok ({len(orders)} orders delivered, one secret and one payment each; "
              "ledger invariants hold)", flush=True)
    print(f"headline: checkout notification->delivered p99 {ms(timings.delivered, 99):.0f} ms at {rate:.0f} "
          f"notifications/s (C={args.concurrency})", flush=True)
    return 1 if problems or timings.errors or done != len(orders) else 0


if __name__ == "__main__":
    raise SystemExit(main())

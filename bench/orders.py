"""Wallet purchases per second on PostgreSQL, through the service and through HTTP, at several concurrencies.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench .venv/bin/python bench/orders.py

It DROPS and recreates the bench database (its name must contain "bench"), migrates it with Alembic, starts
FAB once so the roles exist, then builds tiers, one agent (with a login and a big wallet) per concurrent
buyer, card products and their stock (imported through app.catalog.cards, topped up between runs).

Modes:
- service: threads in this process call app.orders.service.place_wallet_order, each thread with its own
  app context (so its own session and connection) and its own agent: one wallet row lock per buyer.
- http: the real app under gunicorn (4 sync workers, 127.0.0.1, a free port); each client thread is one
  logged-in agent that POSTs /portal/buy with the real CSRF token from the buy page's form. Redirects are not
  followed: a 302 to /portal/orders/<no> is a success, anything else a failure.

For each (mode, concurrency) it prints orders/s and p50/p99 latency in ms, then runs the ledger invariant
check, and its last line is the headline: "headline: service c=16 N orders/s".
"""
from __future__ import annotations

import argparse
import http.client
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

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

PASSWORD = "bench-pass-123"
USER_AGENT = "kameng-bench/1"
FACE_PRICE = 1000  # ¥10.00
COST = 800
DISCOUNT_BP = 9500
START_BALANCE = 10 ** 12  # fen: never the limiting factor
WARMUP_SECONDS = 1.0
# Upper bounds used to size card stock before each run (orders/s); stock is topped up if a run may need more.
RATE_CAP = {"service": 2500, "http": 1500}


@dataclass
class Result:
    mode: str
    concurrency: int
    ok: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful orders only
    errors: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def line(self) -> str:
        lat = sorted(self.latencies)
        errors = ", ".join(f"{k}={v}" for k, v in self.errors.most_common()) or "0"
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        return (f"{self.mode:<7} c={self.concurrency:<3} {self.rate:8.1f} orders/s   p50 {p50:7.2f} ms"
                f"   p99 {p99:7.2f} ms   (n={self.ok}, {self.elapsed:.1f} s, errors: {errors})")


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Buyer:
    agent_id: int
    username: str
    product_id: int


def build_data(app, buyers: int, products: int) -> list[Buyer]:
    from app.agents import service as agents
    from app.agents.models import Tier
    from app.catalog import service as catalog
    from app.catalog.models import Category, Product
    from app.extensions import db
    from app.ledger import service as ledger

    sm = app.appbuilder.sm
    sm.create_db()  # FAB's built-in roles and FAB_ROLES
    ledger.ensure_platform_accounts()
    role = sm.find_role("Agent")
    assert role is not None, "FAB did not create the Agent role"
    tier = Tier(name="bench-总代", rank=40, discount_bp=DISCOUNT_BP, may_recruit=True, may_withdraw=True,
                min_withdrawal=10000, withdrawal_fee_bp=0, direct_commission_bp=0, indirect_commission_bp=0,
                daily_limit=0, settle_days=1,
                # a bench buyer buys far past a reseller's day: the tier's risk limits (editable) are not measured
                risk_order_limit=10 ** 12, risk_daily_limit=10 ** 12)
    db.session.add(tier)
    category = Category(name="bench-游戏点卡")
    db.session.add(category)
    db.session.flush()
    supplier = catalog.platform_supplier()
    product_ids = []
    for i in range(products):
        product = Product(name=f"bench 点卡 {i + 1} 号 10元", category_id=category.id, supplier_id=supplier.id,
                          kind="card", face_price=FACE_PRICE, cost=COST, max_per_order=10, low_stock_threshold=1)
        db.session.add(product)
        db.session.flush()
        product_ids.append(product.id)
    db.session.commit()

    result = []
    for i in range(buyers):
        username = f"bench{i + 1:02d}"
        user = sm.add_user(username, username, "bench", f"{username}@bench.local", role, PASSWORD)
        assert user, f"could not create user {username}"
        agent = agents.create_agent(username, tier.id, None, user_id=user.id)
        ledger.post_journal(f"bench:fund:{agent.id}", "adjustment", [
            ledger.Line(ledger.agent_account_code(agent.id, "wallet"), START_BALANCE),
            ledger.Line("platform:adjustments", -START_BALANCE)], memo="bench funding")
        db.session.commit()
        result.append(Buyer(agent.id, username, product_ids[i % len(product_ids)]))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Load generation: each thread is one buyer; shared start; runs for a duration or a number of orders.


def _drive(mode: str, concurrency: int, make_call, duration: float | None, orders: int | None) -> Result:
    """Run `concurrency` threads; make_call(i) returns (setup, call, teardown) for thread i."""
    result = Result(mode, concurrency)
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    go = threading.Event()
    state = {"t0": 0.0, "deadline": 0.0, "last": 0.0}

    def worker(i: int) -> None:
        setup, call, teardown = make_call(i)
        latencies: list[float] = []
        errors: Counter = Counter()
        ok = 0
        try:
            setup()
            warm_until = time.perf_counter() + WARMUP_SECONDS
            while time.perf_counter() < warm_until:  # connections, caches, JIT-free Python warm-up
                call()
            start_barrier.wait()
            go.wait()
            quota = None if orders is None else orders // concurrency + (1 if i < orders % concurrency else 0)
            while True:
                if quota is not None:
                    if ok + sum(errors.values()) >= quota:
                        break
                elif time.perf_counter() >= state["deadline"]:
                    break
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
            start_barrier.abort()
        finally:
            end = time.perf_counter()
            try:
                teardown()
            finally:
                with lock:
                    result.ok += ok
                    result.latencies.extend(latencies)
                    result.errors.update(errors)
                    state["last"] = max(state["last"], end)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        start_barrier.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise SystemExit(f"{mode} c={concurrency}: a worker failed during warm-up: {dict(result.errors)}") from None
    state["t0"] = time.perf_counter()
    state["deadline"] = state["t0"] + (duration or 0)
    go.set()
    for t in threads:
        t.join()
    result.elapsed = state["last"] - state["t0"]
    return result


def service_calls(app, buyers: list[Buyer]):
    from app.errors import KamengError
    from app.extensions import db
    from app.orders.service import place_wallet_order

    def make_call(i: int):
        buyer = buyers[i]
        ctx = app.app_context()

        def call():
            try:
                place_wallet_order(buyer.agent_id, buyer.product_id, 1)
            except KamengError as exc:
                return type(exc).__name__
            return True

        def teardown():
            db.session.remove()
            ctx.pop()

        return ctx.push, call, teardown

    return make_call


# ---------------------------------------------------------------------------------------------------------------
# HTTP: gunicorn with the real app; sessions logged in through the login form, CSRF token from the buy page.

_CSRF_RE = re.compile(r'<input[^>]*name="csrf_token"[^>]*>')
_VALUE_RE = re.compile(r'value="([^"]+)"')


def _csrf_from(html: str) -> str:
    tag = _CSRF_RE.search(html)
    value = _VALUE_RE.search(tag.group(0)) if tag else None
    if not value:
        raise RuntimeError("no csrf_token field in the page")
    return value.group(1)


def bench_server(workers: int, log_path: Path) -> Gunicorn:
    """The app under gunicorn (common.Gunicorn), ready once its login page answers; the login limit is raised: the
    bench's agents log in from one address within seconds, and that limit is not what we measure."""
    return Gunicorn(workers, log_path, env={"AUTH_RATE_LIMIT": "100000 per minute"}, ready_path="/login/")


def _request(port: int, method: str, path: str, body: str | None = None, cookie: str | None = None):
    headers = {"User-Agent": USER_AGENT}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if cookie:
        headers["Cookie"] = cookie
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheader("Location") or "", resp.headers.get_all("Set-Cookie") or [], data
    finally:
        conn.close()


def _merge_cookies(jar: dict[str, str], set_cookies: list[str]) -> None:
    for raw in set_cookies:
        name, _, rest = raw.partition("=")
        jar[name.strip()] = rest.split(";", 1)[0]


def login_session(port: int, username: str) -> tuple[str, str]:
    """Log in through FAB's form; return (Cookie header, CSRF token from /portal/buy's form)."""
    jar: dict[str, str] = {}

    def cookie() -> str:
        return "; ".join(f"{k}={v}" for k, v in jar.items())

    status, _, sc, page = _request(port, "GET", "/login/")
    _merge_cookies(jar, sc)
    token = _csrf_from(page.decode())
    status, location, sc, _ = _request(port, "POST", "/login/", urlencode(
        {"username": username, "password": PASSWORD, "csrf_token": token}), cookie())
    _merge_cookies(jar, sc)
    if status != 302 or "/login" in location:
        raise SystemExit(f"login failed for {username}: {status} {location}")
    status, _, sc, page = _request(port, "GET", "/portal/buy", cookie=cookie())
    _merge_cookies(jar, sc)
    if status != 200:
        raise SystemExit(f"/portal/buy answered {status} for {username}")
    return cookie(), _csrf_from(page.decode())


def http_calls(port: int, buyers: list[Buyer], sessions: list[tuple[str, str]]):
    def make_call(i: int):
        buyer = buyers[i]
        cookie, token = sessions[i]
        body = urlencode({"csrf_token": token, "product_id": buyer.product_id, "quantity": 1})

        def call():
            # The session cookie is the one from log-in: the flash each purchase adds would be consumed by the
            # order page a browser follows to; not following redirects, we keep the cookie from growing.
            try:
                status, location, _, _ = _request(port, "POST", "/portal/buy", body, cookie)
            except OSError as exc:
                return f"net:{type(exc).__name__}"
            if status == 302 and "/portal/orders/" in location:
                return True
            return f"http {status} -> {location.rsplit('?', 1)[0] or '-'}"

        return (lambda: None), call, (lambda: None)

    return make_call


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per (mode, concurrency) (default 8)")
    parser.add_argument("--orders", type=int, help="orders per (mode, concurrency) instead of a duration")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels (default 1,4,16)")
    parser.add_argument("--modes", default="service,http", help="service, http or both (default both)")
    parser.add_argument("--products", type=int, default=4, help="card products the buyers spread over (default 4)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--profile", metavar="FILE", help="also cProfile a c=1 service run into FILE (.pstats)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not levels or any(c < 1 for c in levels) or not set(modes) <= {"service", "http"} or not modes:
        parser.error("bad --concurrency or --modes")
    duration = None if args.orders else args.duration

    url = database_url()
    t_setup = time.perf_counter()
    print(f"bench database: {url.rsplit('@', 1)[-1]} (recreated)", flush=True)
    recreate_database(url)
    migrate(url)
    app = make_app(url, pool_size=max(levels) + 2)
    from app.extensions import db

    with app.app_context():
        buyers = build_data(app, max(levels), args.products)
        product_ids = sorted({b.product_id for b in buyers})
    print(f"setup: {len(buyers)} agents, {len(product_ids)} card products, "
          f"{time.perf_counter() - t_setup:.1f} s", flush=True)

    def stock_for(mode: str, c: int) -> int:
        if args.orders:
            per_run = args.orders
        else:
            per_run = RATE_CAP[mode] * (duration + WARMUP_SECONDS)
        warm = RATE_CAP[mode] * WARMUP_SECONDS if args.orders else 0
        return int((per_run + warm) / len(product_ids) * 1.2) + c

    results: list[Result] = []

    def run(mode: str, c: int, make_call) -> Result:
        with app.app_context():
            t = time.perf_counter()
            ensure_stock(product_ids, stock_for(mode, c))
            db.session.remove()
            stock_s = time.perf_counter() - t
        res = _drive(mode, c, make_call, duration, args.orders)
        results.append(res)
        print(res.line() + (f"   [stock top-up {stock_s:.1f} s]" if stock_s > 0.5 else ""), flush=True)
        return res

    if "service" in modes:
        for c in levels:
            run("service", c, service_calls(app, buyers))

    if "http" in modes:
        server = bench_server(args.workers, Path("/tmp/kameng-bench-gunicorn.log"))
        try:
            server.wait_ready()
            sessions = [login_session(server.port, b.username) for b in buyers]
            print(f"gunicorn: {args.workers} sync workers on 127.0.0.1:{server.port}, "
                  f"{len(sessions)} agents logged in", flush=True)
            for c in levels:
                run("http", c, http_calls(server.port, buyers, sessions))
        finally:
            server.stop()

    if args.profile:
        profile_service(app, buyers[0], args.profile)

    ok = True
    with app.app_context():
        from sqlalchemy import func, select

        from app.ledger.invariants import check_ledger
        from app.orders.models import Order

        problems = check_ledger()
        delivered = db.session.scalar(select(func.count()).where(Order.status == "delivered"))
        not_delivered = db.session.scalar(select(func.count()).where(Order.status != "delivered"))
        db.session.remove()
    measured = sum(r.ok for r in results)
    print(f"orders in database: {delivered} delivered (measured {measured} + warm-up), {not_delivered} other")
    if problems:
        ok = False
        print("ledger invariants: BROKEN")
        for p in problems:
            print("  " + p)
    else:
        print("ledger invariants: hold")
    if any(r.errors for r in results):
        ok = False
        print("errors: " + "; ".join(f"{r.mode} c={r.concurrency}: {dict(r.errors)}" for r in results if r.errors))

    headline = next((r for r in results if r.mode == "service" and r.concurrency == max(levels)),
                    max(results, key=lambda r: (r.mode == "service", r.concurrency)))
    print(f"headline: {headline.mode} c={headline.concurrency} {headline.rate:.0f} orders/s")
    return 0 if ok else 1


def profile_service(app, buyer: Buyer, path: str, orders: int = 2000) -> None:
    """cProfile place_wallet_order in this thread (c=1); prints the top of the cumulative listing."""
    import cProfile
    import io
    import pstats

    from app.extensions import db
    from app.orders.service import place_wallet_order

    with app.app_context():
        ensure_stock([buyer.product_id], orders + 10)
        place_wallet_order(buyer.agent_id, buyer.product_id, 1)
        count_one_purchase(buyer)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(orders):
            place_wallet_order(buyer.agent_id, buyer.product_id, 1)
        prof.disable()
        db.session.remove()
    prof.dump_stats(path)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    print(f"profile of {orders} orders (c=1) in {path}:\n" + out.getvalue())


def count_one_purchase(buyer: Buyer, repeat: int = 200) -> None:
    """Statements (each one round trip; plus BEGIN/COMMIT) of one wallet card purchase on every engine the path
    uses, and its CPU time in this process (the mean of `repeat` purchases)."""
    from sqlalchemy import event

    from app.extensions import append_engine, db
    from app.orders.service import place_wallet_order

    statements: list[str] = []

    def seen(_conn, _cursor, statement, _params, _context, _many) -> None:
        statements.append(" ".join(statement.split()[:4]))

    engines = {db.engine, append_engine()}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        place_wallet_order(buyer.agent_id, buyer.product_id, 1)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", seen)
    started = time.process_time()
    for _ in range(repeat):
        place_wallet_order(buyer.agent_id, buyer.product_id, 1)
    cpu_ms = (time.process_time() - started) * 1000 / repeat
    print(f"one purchase: {len(statements)} statements, {cpu_ms:.1f} ms CPU in Python (mean of {repeat})")
    for statement in statements:
        print("   ", statement[:100])


if __name__ == "__main__":
    sys.exit(main())

"""CPU per request of the HTTP layer, in process (Flask's test client, no sockets), next to a bare Flask endpoint.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_http REDIS_URL=redis://127.0.0.1:6379/13 \
        .venv/bin/python bench/overhead.py [--requests 500] [--profile DIR]

It DROPS and recreates the bench database (its name must contain "bench"), migrates it, builds one reseller with
an API key and a card product (bench/openapi.py's data), then measures time.process_time per request of:

  bare     a bare Flask app (no extension) answering GET /ping with jsonify({"ok": True})
  hooks    the same endpoint registered on the real Kameng app (every app hook runs, no service work), called
           by a client that keeps cookies (a browser: the app gives it a session)
  machine  the same endpoint at /open/ping, a machine path (app/machines.py), called without cookies
  balance  a signed GET /open/v1/balance
  orders   a signed POST /open/v1/orders (a fresh out_trade_no each time)

each after a warm-up, as µs of CPU per request (the least average over batches of 20: other processes inflate a
batch, never deflate it), as a multiple of `bare` (the signed cases without the client's signing) and as Python
function calls per request (cProfile's count over as many requests: steady whatever the machine's load). `--reuse`
skips the database setup of an earlier run. With --profile DIR it also writes a
cProfile of each (DIR/<name>.pstats, timed in CPU seconds: waits on PostgreSQL and Redis left out) and prints the top
entries by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/kameng_bench_http")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import database_url, ensure_stock, make_app, migrate, recreate_database  # noqa: E402


def bare_app():
    from flask import Flask, jsonify

    app = Flask("bare")

    @app.get("/ping")
    def ping():
        return jsonify({"ok": True})

    return app


def signed(app_key: str, secret: str, method: str, path: str, body: bytes) -> dict:
    from app.openapi.signing import signed_headers

    headers = signed_headers(app_key, secret, method, path, body)
    if body:
        headers["Content-Type"] = "application/json"
    return headers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per case (default 500)")
    parser.add_argument("--profile", metavar="DIR", help="also cProfile each case into DIR/<case>.pstats")
    parser.add_argument("--cases", default="bare,hooks,machine,balance,orders")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the bench database of an earlier run (a new API key for its first reseller)")
    args = parser.parse_args(argv)

    import json

    url = database_url()
    if not args.reuse:
        recreate_database(url)
        migrate(url)
    app = make_app(url, OPENAPI_RATE_LIMIT="100000000 per minute")
    from flask import jsonify
    from openapi import build_data  # after the app: it puts bench/ first on sys.path (bench/dashboards.py)

    def ping():
        return jsonify({"ok": True})

    app.add_url_rule("/ping", "bench_ping", ping)
    app.add_url_rule("/open/ping", "bench_machine_ping", ping)  # a machine path (app/machines.py), no blueprint
    from app.extensions import db

    with app.app_context():
        reseller = _existing_reseller() if args.reuse else build_data(app, 1, 1)[0]
        ensure_stock([reseller.product_id], args.requests * 3 + 100)
        db.session.remove()

    browser = app.test_client()  # keeps the cookies it is given, as a browser does
    kameng = app.test_client(use_cookies=False)  # a reseller's program: no cookies
    bare = bare_app().test_client()
    run_id = uuid.uuid4().hex[:8]
    seq = [0]

    def bare_case():
        return bare.get("/ping")

    def hooks_case():
        return browser.get("/ping")

    def machine_case():
        return kameng.get("/open/ping")

    def balance_case():
        return kameng.get("/open/v1/balance", headers=signed(reseller.app_key, reseller.secret, "GET",
                                                             "/open/v1/balance", b""))

    def orders_case():
        seq[0] += 1
        body = json.dumps({"out_trade_no": f"h{run_id}-{seq[0]}", "product_id": reseller.product_id,
                           "quantity": 1}).encode()
        return kameng.post("/open/v1/orders", data=body,
                           headers=signed(reseller.app_key, reseller.secret, "POST", "/open/v1/orders", body))

    cases = {"bare": (bare_case, 200), "hooks": (hooks_case, 200), "machine": (machine_case, 200),
             "balance": (balance_case, 200),
             "orders": (orders_case, 201)}
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    # Signing a request is the client's work, not the server's: measured apart and taken off.
    sign_cost = _cpu(lambda: signed(reseller.app_key, reseller.secret, "POST", "/open/v1/orders", b"{}"),
                     args.requests)
    results = {}
    for name in chosen:
        call, status = cases[name]
        for _ in range(50):  # warm-up: imports, caches, pools
            response = call()
            assert response.status_code == status, (name, response.status_code, response.get_data(as_text=True))
        per = _cpu(call, args.requests) - (sign_cost if name in ("balance", "orders") else 0.0)
        profiler = cProfile.Profile(time.process_time)  # CPU, not the waits on PostgreSQL and Redis
        profiler.enable()
        for _ in range(args.requests):
            call()
        profiler.disable()
        stats = pstats.Stats(profiler, stream=io.StringIO())
        results[name] = (per, stats.total_calls / args.requests)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            path = Path(args.profile) / f"{name}.pstats"
            profiler.dump_stats(str(path))
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
            print(f"--- profile of {name} ({path}) ---\n" + out.getvalue(), flush=True)
    loop = _loop_seconds()
    print(f"machine: a 10M-iteration Python loop takes {loop:.2f} s; load {open('/proc/loadavg').read().split()[0]}")
    base = results.get("bare", (0.0, 0))[0]
    for name, (per, calls) in results.items():
        ratio = f"  {per / base:6.1f} × bare" if base else ""
        print(f"{name:<8} {per * 1e6:8.0f} µs CPU/request{ratio}   {calls:7.0f} Python calls/request")
    return 0


def _cpu(call, n: int, size: int = 20) -> float:
    """CPU seconds per call: the least of the averages of batches of `size` calls (another process on the same cores
    inflates a batch's figure, never deflates it)."""
    best = float("inf")
    for _ in range(max(1, n // size)):
        started = time.process_time()
        for _ in range(size):
            call()
        best = min(best, (time.process_time() - started) / size)
    return best


def _existing_reseller():
    """The first reseller of an earlier run's data, with a new key (a key's secret is shown only when made)."""
    from openapi import Reseller
    from sqlalchemy import text

    from app.extensions import db
    from app.openapi.service import create_key

    agent_id, product_id = db.session.execute(text(
        "SELECT a.id, (SELECT min(id) FROM product WHERE name LIKE 'bench api%') FROM agent a "
        "WHERE a.name = 'api-bench01'")).one()
    key, secret = create_key(agent_id, "overhead")
    db.session.commit()
    return Reseller(agent_id, key.app_key, secret, product_id)


def _loop_seconds() -> float:
    started = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU per request of the HTTP layer, in process (Flask's test client, no sockets), next to a bare Flask endpoint.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_http REDIS_URL=redis://127.0.0.1:6379/13 \
        .venv/bin/python bench/overhead.py [--requests 500] [--profile DIR]

It DROPS and recreates the bench database (its name must contain "bench"), migrates it, builds one reseller with
an API key and a card product (bench/openapi.py's data), then measures time.process_time per request of:

  bare     a bare Flask app (no extension) answering GET /ping with jsonify({"ok": True})
  hooks    the same endpoint registered on the real Kameng app (every app hook runs, no service work)
  balance  a signed GET /open/v1/balance
  orders   a signed POST /open/v1/orders (a fresh out_trade_no each time)

each after a warm-up, as µs of CPU per request and as a multiple of `bare`. With --profile DIR it also writes a
cProfile of each (DIR/<name>.pstats) and prints the top entries by cumulative time.
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
    parser.add_argument("--cases", default="bare,hooks,balance,orders")
    args = parser.parse_args(argv)

    import json

    url = database_url()
    recreate_database(url)
    migrate(url)
    from openapi import build_data

    app = make_app(url, OPENAPI_RATE_LIMIT="100000000 per minute")
    from flask import jsonify

    def ping():
        return jsonify({"ok": True})

    app.add_url_rule("/ping", "bench_ping", ping)
    from app.extensions import db

    with app.app_context():
        reseller = build_data(app, 1, 1)[0]
        ensure_stock([reseller.product_id], args.requests * 3 + 100)
        db.session.remove()

    kameng = app.test_client()
    bare = bare_app().test_client()
    run_id = uuid.uuid4().hex[:8]
    seq = [0]

    def bare_case():
        return bare.get("/ping")

    def hooks_case():
        return kameng.get("/ping")

    def balance_case():
        return kameng.get("/open/v1/balance", headers=signed(reseller.app_key, reseller.secret, "GET",
                                                             "/open/v1/balance", b""))

    def orders_case():
        seq[0] += 1
        body = json.dumps({"out_trade_no": f"h{run_id}-{seq[0]}", "product_id": reseller.product_id,
                           "quantity": 1}).encode()
        return kameng.post("/open/v1/orders", data=body,
                           headers=signed(reseller.app_key, reseller.secret, "POST", "/open/v1/orders", body))

    cases = {"bare": (bare_case, 200), "hooks": (hooks_case, 200), "balance": (balance_case, 200),
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
        results[name] = per
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.requests):
                call()
            profiler.disable()
            path = Path(args.profile) / f"{name}.pstats"
            profiler.dump_stats(str(path))
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
            print(f"--- profile of {name} ({path}) ---\n" + out.getvalue(), flush=True)
    loop = _loop_seconds()
    print(f"machine: a 10M-iteration Python loop takes {loop:.2f} s; load {open('/proc/loadavg').read().split()[0]}")
    base = results.get("bare")
    for name, per in results.items():
        ratio = f"  {per / base:6.1f} × bare" if base else ""
        print(f"{name:<8} {per * 1e6:8.0f} µs CPU/request{ratio}")
    return 0


def _cpu(call, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - started) / n


def _loop_seconds() -> float:
    started = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())

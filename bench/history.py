"""`flask kameng demo --orders N` at scale: build the history into a fresh bench database and time each phase.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/kameng_bench_history .venv/bin/python bench/history.py \
        --orders 1000000

DROPS and recreates the bench database (its name must contain "bench"), migrates it, loads the demo data, then
runs app.analytics.history.generate (COPY, rollup rebuild, money-flow fold) and the ledger check. Prints per phase
the wall time, this process's CPU time, and the CPU time of the PostgreSQL backend serving the load (read from
/proc when the server runs on this machine), with the load average before and after: on a shared machine the
wall times move with the neighbours, the CPU times much less. Last line: total seconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import database_url, make_app, migrate, recreate_database  # noqa: E402


def backend_cpu(pid: int) -> float | None:
    """utime + stime of a local process, in seconds (None when /proc does not show it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="Reuse the database as it is (no drop, no demo load).")
    args = parser.parse_args()
    url = database_url()
    if not args.keep:
        recreate_database(url)
        migrate(url)
    app = make_app(url)
    with app.app_context():
        from sqlalchemy import text

        from app.analytics import history
        from app.demo import load_demo
        from app.extensions import db
        from app.ledger.invariants import check_ledger

        if not args.keep:
            load_demo("bench-demo-pass")
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar()
        db.session.commit()  # the generator's transaction starts on this same pooled connection
        load_before = os.getloadavg()
        pg_before = backend_cpu(pid)
        t0 = time.perf_counter()
        report = history.generate(args.orders, seed=history.DEFAULT_SEED if args.seed is None else args.seed,
                                  progress=lambda msg: print(f"  … {msg}", flush=True))
        total = time.perf_counter() - t0
        pg_after = backend_cpu(pid)
        print(f"orders {report.orders:,}, agents +{report.agents:,}, journals {report.journals:,}, "
              f"postings {report.postings:,}, secrets {report.card_secrets:,}, commissions {report.commissions:,}")
        for phase, seconds in report.timings.items():
            print(f"  {phase:<38} {seconds:>8.2f} s wall   {report.cpu.get(phase, float('nan')):>8.2f} s CPU")
        if pg_before is not None and pg_after is not None:
            print(f"  PostgreSQL backend CPU over the whole run (pid {pid}): {pg_after - pg_before:.2f} s")
        print(f"  load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} (2 cores)")
        t = time.perf_counter()
        problems = check_ledger()
        print(f"ledger invariants: {'hold' if not problems else problems[:5]} ({time.perf_counter() - t:.1f} s)")
        size = db.session.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
        print(f"database size: {size}")
        db.session.remove()
        print(f"{total:.2f}")


if __name__ == "__main__":
    main()

"""bench/race.py at a small size, as a subprocess against a bench database of its own: resellers racing over HTTP
(gunicorn) for the last secrets of one product get exactly as many winners as secrets, every other answer a clean
out-of-stock, no 5xx, and the ledger stays clean. Behaviour, not speed."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PG_URL, REDIS_URL, ROOT

pytestmark = pytest.mark.postgres_only


def _bench_url() -> str:
    base, name = PG_URL.rsplit("/", 1)
    return f"{base}/{name.split('?', 1)[0]}_bench_race"  # race.py refuses a database without "bench" in its name


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "CARD_SECRET_KEY", "PUBLIC_BASE_URL")}
    env.update(DATABASE_URL=_bench_url(), REDIS_URL=REDIS_URL)
    return subprocess.run([sys.executable, str(ROOT / "bench" / "race.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)


def test_sixty_buyers_race_for_ten_secrets():
    done = _run("--buyers", "60", "--secrets", "10", "--threads", "24", "--workers", "2")
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.fullmatch(r"headline: race 60 buyers / 10 secrets: 10 winners, 50 out-of-stock, 0 other, 0 5xx, "
                        r"ledger clean, [0-9.]+ s", lines[-1]), lines[-1]
    assert "FAILED" not in done.stdout
    assert "[ok] secrets delivered distinct: 10 of 10" in done.stdout


def test_the_race_refuses_a_database_not_named_bench():
    """It drops and recreates its database: never one whose name does not say it is a bench's."""
    env = dict(os.environ, DATABASE_URL=PG_URL.rsplit("/", 1)[0] + "/kameng_not_a_b3nch")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "race.py"), "--buyers", "2", "--secrets", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to drop database" in done.stdout + done.stderr

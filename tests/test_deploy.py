"""The web process as deployed (deploy/gunicorn.conf.py, PROMETHEUS_MULTIPROC_DIR): /metrics adds up the requests of
every gunicorn worker, a worker killed and replaced keeps its counts but leaves the live gauges, and the error log is
JSON. `make deploy-check` (deploy/check.py) runs the whole layout with nginx; this is the part that fits the suite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.services import free_port, wait_until
from tests.conftest import ROOT

pytestmark = pytest.mark.postgres_only
TOKEN = "deploy-test-token-" + "y" * 32


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return {int(p) for p in children.read_text().split()} if children.exists() else set()


def test_gunicorn_as_deployed_counts_across_workers(app, pg_url, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_stale.db").write_bytes(b"left over from an earlier run")  # wiped at start
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(DATABASE_URL=pg_url, FAB_CREATE_DB="False", FAB_UPDATE_PERMS="False", WEB_WORKERS="2",
               PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), METRICS_TOKEN=TOKEN, LOG_FORMAT="json",
               PYTHONUNBUFFERED="1")
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "deploy" /
                                                                                      "gunicorn.conf.py"),
                             "--bind", f"127.0.0.1:{port}", "run:app"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(base + "/healthz", timeout=2).status_code == 200, 90, "gunicorn")
        assert not (metrics_dir / "counter_stale.db").exists()
        wait_until(lambda: len(worker_pids(proc.pid)) == 2, 30, "two workers")
        session = requests.Session()
        for _ in range(40):
            assert session.get(base + "/healthz", timeout=5).status_code == 200
            session.close()  # a new connection each time: the requests spread over both workers

        def scrape() -> dict:
            r = requests.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert r.status_code == 200
            return samples(r.text)

        before = scrape()
        served = before[("kameng_http_requests_total", (("group", "probes"), ("method", "GET"), ("status", "200")))]
        assert served >= 41
        counted_by = {int(n[len("counter_"):-3]) for n in os.listdir(metrics_dir) if n.startswith("counter_")}
        assert counted_by <= worker_pids(proc.pid) and (metrics_dir / f"gauge_livesum_{min(counted_by)}.db").exists()

        # The worker(s) that counted are killed: gunicorn replaces them. The scrape, answered by another process,
        # still adds up their requests (their files stay); their live gauges (pool connections) no longer count.
        for victim in counted_by:
            os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(proc.pid)) == 2 and not counted_by & worker_pids(proc.pid), 60,
                   "replacement workers")
        wait_until(lambda: requests.get(base + "/healthz", timeout=2).status_code == 200, 30, "the replacements")
        after = scrape()
        assert after[("kameng_http_requests_total", (("group", "probes"), ("method", "GET"), ("status", "200")))] \
            >= served + 1
        assert not [n for n in os.listdir(metrics_dir) if n.startswith("gauge_live")
                    and int(n.rsplit("_", 1)[1][:-3]) in counted_by]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    lines = [line for line in (tmp_path / "gunicorn.log").read_text().splitlines() if line.startswith("{")]
    assert any(json.loads(line)["logger"] == "gunicorn.error" for line in lines), lines[:5]

"""Shared bench helpers: a fresh migrated PostgreSQL database, the bench app, latency statistics, a free port.

Import this module before anything from `app` or `config`: those read DATABASE_URL / REDIS_URL once at import,
so the defaults below must be in the environment first.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/kameng_bench"
os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
# Benches build throwaway data on the built-in development keys, which only KAMENG_ENV=development accepts.
os.environ["KAMENG_ENV"] = "development"
# The benches' simulators and servers listen on 127.0.0.1: let the outbound client reach them (app/outbound.py).
os.environ.setdefault("OUTBOUND_ALLOW_PRIVATE", "true")


def database_url() -> str:
    """DATABASE_URL as given (postgresql://...), for psycopg and for the gunicorn child."""
    return os.environ["DATABASE_URL"]


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def recreate_database(url: str) -> None:
    """DROP and CREATE the bench database (never anything else: the name must mention 'bench')."""
    import psycopg

    base, name = url.rsplit("/", 1)
    name = name.split("?", 1)[0]
    if "bench" not in name:
        raise SystemExit(f"refusing to drop database {name!r}: the bench database name must contain 'bench'")
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def migrate(url: str) -> None:
    """The production way: Alembic with FAB's create_all off."""
    from flask_migrate import upgrade

    from app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url), "FAB_CREATE_DB": False,
                      "FAB_UPDATE_PERMS": False})
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        from app.extensions import db
        db.engine.dispose()


def make_app(url: str, pool_size: int = 5, **overrides):
    """The real app, with a pool big enough for `pool_size` threads (the default pool holds 5 + 10 overflow)."""
    from app import create_app
    from config import Config

    engine_options = dict(Config.SQLALCHEMY_ENGINE_OPTIONS)
    engine_options.update(pool_size=max(5, pool_size), max_overflow=10)
    config = {"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url), "SQLALCHEMY_ENGINE_OPTIONS": engine_options}
    config.update(overrides)
    return create_app(config)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Answer:
    """What the load generators read of an answer (the names requests uses)."""

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class Http:
    """One load-generating client's connection: HTTP/1.1 on http.client, kept open while the server keeps it and
    opened again by itself when the server closed it (gunicorn's sync workers close after each answer). The load
    generators share the server's two cores; requests cost them about three times the CPU per call. Network
    failures raise OSError or http.client.HTTPException."""

    def __init__(self, base_url: str, timeout: float = 60) -> None:
        parts = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            self.connection.request("POST", path, body=body, headers=headers)
            response = self.connection.getresponse()
            return Answer(response.status, response.read())
        except BaseException:
            self.connection.close()  # the next call starts on a new connection
            raise

    def post_json(self, path: str, data: object) -> Answer:
        return self.post(path, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def post_form(self, path: str, fields: dict[str, str]) -> Answer:
        return self.post(path, urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"})

    def close(self) -> None:
        self.connection.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def ensure_stock(product_ids: list[int], at_least: int) -> None:
    """Top each product up to `at_least` available secrets through the real import path (large batches)."""
    import uuid

    from app.catalog import cards

    counts = cards.available_counts(product_ids)
    for pid in product_ids:
        missing = at_least - counts.get(pid, 0)
        if missing <= 0:
            continue
        tag = uuid.uuid4().hex[:8]  # unique across runs and processes: each import adds exactly `missing`
        lines = "\n".join(f"BENCH{pid:03d}-{tag}-{n:08d}" for n in range(missing))
        batch = cards.create_import(pid, lines, None, "cli")
        report = cards.run_import(batch.id)
        assert report["added"] == missing, report


def find_pgbench() -> str:
    """PostgreSQL's own pgbench: on PATH, else the newest /usr/lib/postgresql/<version>/bin/pgbench."""
    import glob
    import shutil

    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")])
    if not candidates:
        raise SystemExit("pgbench not found (PATH, /usr/lib/postgresql/*/bin): install postgresql-contrib/client")
    return candidates[-1]


class Gunicorn:
    """The real app (run:app) under gunicorn on 127.0.0.1 and a free port, with the bench's environment on top of
    ours (rate limits raised so they are not what a bench measures). Stopped through its master (SIGTERM)."""

    def __init__(self, workers: int, log_path: Path, env: dict[str, str] | None = None,
                 worker_class: str = "sync", threads: int = 1, ready_path: str = "/open/v1/openapi.json",
                 app_spec: str = "run:app", deployed: bool = True):
        import subprocess

        self.port = free_port()
        self.log_path = log_path
        self.ready_path = ready_path
        self.description = f"{workers} {worker_class} workers" + (f" x {threads} threads" if threads > 1 else "")
        child_env = dict(os.environ)
        child_env.update({"FAB_CREATE_DB": "False", "FAB_UPDATE_PERMS": "False", "PYTHONUNBUFFERED": "1"})
        child_env.update(env or {})
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        # The deployed settings (deploy/gunicorn.conf.py: hooks such as the workers' warm-up), then the bench's own;
        # another app (app_spec, e.g. bench/openapi.py's bare yardstick) is served without the deployed hooks.
        command = [str(Path(sys.executable).parent / "gunicorn")]
        if deployed:
            command += ["-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
        else:
            command += ["--pythonpath", str(ROOT / "bench"), "--no-control-socket"]
        command += ["--workers", str(workers),
                   "--worker-class", worker_class, "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
                   "--timeout", "60", "--backlog", "2048"]
        if threads > 1:
            command += ["--threads", str(threads)]
        self.proc = subprocess.Popen(command + [app_spec], cwd=ROOT, env=child_env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        import time

        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(self.base_url + self.ready_path, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit(f"gunicorn did not answer within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the master stops its own workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> Gunicorn:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def ceiling(meter: CpuMeter, units: int, elapsed: float, floor: CpuMeter, floor_units: int) -> tuple[float, str]:
    """The most units/s the cores busy in a measured run allow if the web workers spent per unit no more than they
    spent per unit serving bench/bare_app.py (`floor`), while PostgreSQL, Redis and the load generator spent what they
    did per unit in the run. Returns that rate and a line saying how it was reached."""
    if not units or not floor_units or not elapsed:
        return 0.0, "nothing measured"
    per = {side: seconds / units for side, seconds in meter.spent.items()}
    cores = sum(meter.spent.values()) / elapsed
    web_floor = floor.spent["gunicorn workers"] / floor_units
    most = cores / (per["postgres"] + per["redis"] + per["client"] + web_floor)
    return most, (f"{cores:.2f} cores busy; per unit PostgreSQL {per['postgres'] * 1000:.2f} + Redis "
                  f"{per['redis'] * 1000:.2f} + load generator {per['client'] * 1000:.2f} ms, web workers "
                  f"{per['gunicorn workers'] * 1000:.2f} ms (the bare app {web_floor * 1000:.2f}): with the web "
                  f"workers at the bare app's CPU, at most {most:.0f}/s")


class CpuMeter:
    """CPU seconds spent by each side of a bench between start() and stop(), read from /proc (Linux): the
    gunicorn workers (children of `server_pid`), every postgres and redis-server process (with the backends that
    exited meanwhile), and this process with its exited children (the client: its own threads, or pgbench). Divided
    by the work done, it says where a request's CPU goes on this machine."""

    def __init__(self, server_pid: int | None = None):
        self.server_pid = server_pid
        self.start_times: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    @staticmethod
    def _cpu_seconds(pid: int) -> tuple[str, int, float, float] | None:
        """(name, parent pid, own CPU seconds, CPU seconds of its children that exited and were waited for)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            return None
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick,
                (int(fields[13]) + int(fields[14])) / tick)

    def _snapshot(self) -> dict[str, float]:
        sides = {"gunicorn workers": 0.0, "postgres": 0.0, "redis": 0.0, "client": 0.0}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            found = self._cpu_seconds(int(entry))
            if found is None:
                continue
            name, parent, seconds, exited = found
            # Exited children count too: a load generator run as a child (pgbench) and, for PostgreSQL, backends
            # whose connection closed (the postmaster waits for them).
            if int(entry) == os.getpid():
                sides["client"] += seconds + exited
            elif self.server_pid is not None and parent == self.server_pid:
                sides["gunicorn workers"] += seconds
            elif name.startswith("postgres"):
                sides["postgres"] += seconds + exited
            elif name.startswith("redis-server"):
                sides["redis"] += seconds
        return sides

    def start(self) -> None:
        self.start_times = self._snapshot()

    def stop(self) -> None:
        end = self._snapshot()
        self.spent = {side: end[side] - self.start_times.get(side, 0.0) for side in end}

    def per_unit(self, units: int, unit: str = "order") -> str:
        if not units or not self.spent:
            return "cpu: nothing measured"
        parts = ", ".join(f"{side} {1000 * s / units:.2f}" for side, s in self.spent.items())
        return f"cpu ms per {unit}: {parts} (total {1000 * sum(self.spent.values()) / units:.2f})"

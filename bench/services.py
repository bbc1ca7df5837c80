"""Throwaway PostgreSQL clusters and redis-servers of our own, to stop, kill and restart without touching the
machine's shared ones (other test suites run on those). Used by bench/soak.py, deploy/check.py and the outage tests.

PostgreSQL: `initdb` from /usr/lib/postgresql/<newest>/bin into a temporary directory, trust authentication on
127.0.0.1 and a free port, fsync off (throwaway data). Run as the `postgres` user when we are root (PostgreSQL
refuses to run as root).
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.1) -> float:
    """Wait until condition() is true; return the seconds it took, or raise naming `what`. A RuntimeError from the
    condition (a process that exited) ends the wait at once; other errors count as "not yet"."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except RuntimeError:
            raise
        except Exception:
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def postgres_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")])
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return found


class PrivatePostgres:
    """A PostgreSQL cluster of our own: start, stop (fast: clients are cut off), restart, kill."""

    def __init__(self, port: int | None = None, root: Path | None = None):
        self.port = port or free_port()
        self.root = Path(root or tempfile.mkdtemp(prefix="kameng-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=timeout)

    def init(self) -> PrivatePostgres:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nmax_connections = 200\nshared_buffers = 64MB\n")
        return self

    def start(self, timeout: float = 60) -> float:
        """Start and wait until it accepts connections; returns the seconds that took."""
        started = time.monotonic()
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)),
                  "start")
        wait_until(self.ready, timeout, f"PostgreSQL on port {self.port}")
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> None:
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> float:
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash: the next start runs recovery)."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


class PrivateRedis:
    """A redis-server of our own on a free port (nothing persisted): start, stop, restart."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--daemonize", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.ready, timeout, f"redis-server on port {self.port}")
        return time.monotonic() - started

    def ready(self) -> bool:
        from redis import Redis

        client = Redis.from_url(self.url(), socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self) -> float:
        self.stop()
        return self.start()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""The multi-host layout, on one machine: a PostgreSQL cluster and a redis-server of our own, the upstream supplier
simulator, two gunicorn web processes (deploy/gunicorn.conf.py) on different ports, two `flask kameng worker`
processes, and Debian's nginx in front (deploy/nginx/*.conf), everything on 127.0.0.1 and started from one
environment file written like deploy/kameng.env.example. Used by deploy/check.py (`make deploy-check`) and
bench/soak.py, which also stop, kill and restart its parts.

Only what this module started is ever stopped or killed (by process id); the machine's shared PostgreSQL and
Redis are not touched.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.services import PrivatePostgres, PrivateRedis, free_port, wait_until  # noqa: E402

BIN = Path(sys.executable).parent
DEMO_PASSWORD = "kameng-deploy-check"
SANDBOX_KEY = "kameng-deploy-sandbox-key"
SUPPLIER_KEY = "kameng-deploy-supplier-key"
UNLIMITED = "1000000 per minute"


@dataclass
class Proc:
    name: str
    command: list[str]
    env: dict
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        handle = open(self.log, "a")  # noqa: SIM115 (kept by the child; closed when we stop it)
        handle.write(f"\n--- start {time.strftime('%H:%M:%S')}: {' '.join(self.command)}\n")
        handle.flush()
        self.popen = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        handle.close()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send `sig` to this process and its children (its own session: nothing else is in that group)."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Stack:
    webs: int = 2
    workers: int = 2
    web_workers: int = 2
    supplier_latency_ms: int = 50
    extra_env: dict = field(default_factory=dict)
    say: object = print
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kameng-deploy-")))

    def __post_init__(self) -> None:
        os.chmod(self.root, 0o755)  # PostgreSQL (user postgres) and nginx's workers (nobody) look inside
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg = PrivatePostgres(root=self.root / "pg")
        (self.root / "pg").mkdir(exist_ok=True)
        self.redis = PrivateRedis()
        self.nginx_port = free_port()
        self.web_ports = [free_port() for _ in range(self.webs)]
        self.supplier_port = free_port()
        self.metrics_token = secrets.token_urlsafe(32)
        self.env_file = self.root / "kameng.env"
        self.procs: dict[str, Proc] = {}

    # --- addresses ------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def web_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.web_ports[i]}"

    @property
    def database_url(self) -> str:
        return self.pg.url("kameng")

    # --- the environment file ---------------------------------------------------------------------------------

    def write_env_file(self) -> dict:
        """kameng.env as systemd reads it (KEY=value), like deploy/kameng.env.example but on 127.0.0.1 and the
        development keys (the demo data and the sandbox channel exist only in development)."""
        values = {
            "KAMENG_ENV": "development",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url(0),
            "PUBLIC_BASE_URL": self.base_url,
            "TRUSTED_PROXIES": "1",
            "FAB_CREATE_DB": "False",
            "FAB_UPDATE_PERMS": "False",
            "WEB_WORKERS": str(self.web_workers),
            "METRICS_TOKEN": self.metrics_token,
            "LOG_FORMAT": "json",
            "OUTBOUND_ALLOW_PRIVATE": "true",  # the supplier simulator listens on 127.0.0.1
            # one client address (127.0.0.1) sends everything here: the per-address limits are not what is checked
            "OPENAPI_RATE_LIMIT": UNLIMITED, "SHOP_ORDER_RATE_LIMIT": UNLIMITED, "SHOP_LOOKUP_RATE_LIMIT": UNLIMITED,
            "NOTIFY_RATE_LIMIT": UNLIMITED, "PAY_STATUS_RATE_LIMIT": UNLIMITED, "AUTH_RATE_LIMIT": UNLIMITED,
            "RECHARGE_POLL_SECONDS": "2", "OUTBOX_SWEEP_SECONDS": "5",
        }
        values.update(self.extra_env)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return values

    def process_env(self, **more: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY",
                                                                  "CARD_SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR")}
        for line in self.env_file.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        env["PYTHONUNBUFFERED"] = "1"
        env.update(more)
        return env

    # --- start and stop ---------------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.pg.init()
        self.pg.start()
        self.pg.create_database("kameng")
        self.redis.start()
        self.write_env_file()
        self.say(f"  PostgreSQL 127.0.0.1:{self.pg.port}, Redis 127.0.0.1:{self.redis.port}, env file {self.env_file}")
        self._run_flask("db", "upgrade")
        self._add(Proc("supplier-sim", [str(BIN / "flask"), "--app", "run", "kameng", "supplier-sim", "--port",
                                        str(self.supplier_port), "--key", SUPPLIER_KEY, "--latency-ms",
                                        str(self.supplier_latency_ms)],
                       self.process_env(), self.logs / "supplier-sim.log")).start()
        wait_until(lambda: _port_open(self.supplier_port), 60, "the supplier simulator", 0.2)
        # The demo creates FAB's roles and permissions (as kameng-migrate.service's second step does) and its data.
        self._run_flask("kameng", "demo", "--password", DEMO_PASSWORD, "--sandbox-key", SANDBOX_KEY,
                        "--supplier-url", f"http://127.0.0.1:{self.supplier_port}", "--supplier-key", SUPPLIER_KEY,
                        FAB_CREATE_DB="True", FAB_UPDATE_PERMS="True")
        for i in range(self.webs):
            self._add(self.web_proc(i)).start()
        for i in range(self.workers):
            self._add(self.worker_proc(i)).start()
        self._add(self.nginx_proc()).start()
        for i in range(self.webs):
            self.wait_web(i)
        self.wait_workers(self.workers)
        wait_until(lambda: _http_ok(self.base_url + "/readyz"), 60, "nginx in front of the web processes", 0.2)
        self.say(f"  nginx 127.0.0.1:{self.nginx_port} -> gunicorn {', '.join(map(str, self.web_ports))} "
                 f"({self.web_workers} workers each); {self.workers} workers; supplier simulator "
                 f"127.0.0.1:{self.supplier_port}; up in {time.monotonic() - started:.1f} s")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.redis.stop()
        self.pg.stop("fast")

    def destroy(self, keep_logs: bool = False) -> None:
        self.stop()
        if keep_logs:
            shutil.rmtree(self.root / "pg", ignore_errors=True)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def _add(self, proc: Proc) -> Proc:
        self.procs[proc.name] = proc
        return proc

    def _run_flask(self, *args: str, **env: str) -> str:
        done = subprocess.run([str(BIN / "flask"), "--app", "run", *args], cwd=ROOT, env=self.process_env(**env),
                              capture_output=True, text=True, timeout=600)
        (self.logs / "setup.log").open("a").write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        return done.stdout

    def flask(self, *args: str) -> str:
        return self._run_flask(*args)

    # --- the parts ------------------------------------------------------------------------------------------

    def web_proc(self, i: int) -> Proc:
        port = self.web_ports[i]
        return Proc(f"web{i}", [str(BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "--bind",
                                f"127.0.0.1:{port}", "run:app"],
                    self.process_env(PROMETHEUS_MULTIPROC_DIR=str(self.root / f"metrics-{port}")),
                    self.logs / f"web{i}.log")

    def worker_proc(self, i: int) -> Proc:
        return Proc(f"worker{i}", [str(BIN / "flask"), "--app", "run", "kameng", "worker"], self.process_env(),
                    self.logs / f"worker{i}.log")

    def nginx_proc(self) -> Proc:
        conf = self.write_nginx_conf()
        return Proc("nginx", [nginx_binary(), "-p", str(self.root / "nginx"), "-c", str(conf), "-e",
                              str(self.logs / "nginx-error.log")], dict(os.environ), self.logs / "nginx.log")

    def write_nginx_conf(self) -> Path:
        prefix = self.root / "nginx"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(prefix / sub, 0o777)  # nginx's workers (nobody when we are root) buffer bodies here
        os.chmod(self.root, 0o755)
        upstream = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in self.web_ports)
        conf = prefix / "nginx.conf"
        conf.write_text(f"""# written by deploy/stack.py: the production snippets, on 127.0.0.1 without TLS
worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {self.logs}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {ROOT}/deploy/nginx/kameng-http.conf;
    access_log {self.logs}/nginx-access.log kameng_json;
    upstream kameng_web {{
{upstream}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{self.nginx_port};
        server_name _;
        set $kameng_app {ROOT}/app;
        set $kameng_fab_static {fab_static_root()};
        include {ROOT}/deploy/nginx/kameng-proxy.conf;
    }}
}}
""")
        return conf

    def wait_web(self, i: int, timeout: float = 90) -> float:
        proc = self.procs[f"web{i}"]

        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"web{i} exited; see {proc.log}")
            return _http_ok(self.web_url(i) + "/readyz")

        return wait_until(up, timeout, f"web{i} on port {self.web_ports[i]}", 0.2)

    def wait_workers(self, count: int, timeout: float = 90) -> float:
        from redis import Redis

        client = Redis.from_url(self.redis.url(0), socket_timeout=2, socket_connect_timeout=2)
        try:
            return wait_until(lambda: client.scard("rq:workers") >= count, timeout, f"{count} workers registered",
                              0.2)
        finally:
            client.close()

    def worker_registered(self, name: str) -> bool:
        """Whether the process behind `name` (worker0, ...) is registered in Redis as an RQ worker."""
        from redis import Redis

        pid = self.procs[name].pid
        client = Redis.from_url(self.redis.url(0), socket_timeout=2, socket_connect_timeout=2)
        try:
            return any(client.hget(key, "pid") == str(pid).encode() for key in client.smembers("rq:workers"))
        finally:
            client.close()

    # --- faults ---------------------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL a part (and its children): a crash, no clean-up."""
        self.procs[name].kill()

    def restart(self, name: str) -> None:
        """Start a part again, as systemd's Restart=always would."""
        proc = self.procs[name]
        if proc.alive():
            proc.stop()
        builders = {"nginx": self.nginx_proc}
        if name.startswith("web"):
            fresh = self.web_proc(int(name[3:]))
        elif name.startswith("worker"):
            fresh = self.worker_proc(int(name[6:]))
        else:
            fresh = builders[name]()
        self.procs[name] = fresh
        fresh.start()

    def metrics(self, i: int) -> str:
        import requests

        r = requests.get(self.web_url(i) + "/metrics", headers={"Authorization": f"Bearer {self.metrics_token}"},
                         timeout=10)
        r.raise_for_status()
        return r.text

    def describe(self) -> dict:
        return {"root": str(self.root), "nginx": self.base_url, "web": [self.web_url(i) for i in range(self.webs)],
                "database": self.database_url, "redis": self.redis.url(0),
                "pids": {name: p.pid for name, p in self.procs.items()}}

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.say(f"  start-up failed; logs in {self.logs}")
            self.destroy(keep_logs=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy(keep_logs=exc[0] is not None)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise RuntimeError("nginx is not installed: apt-get install -y nginx (make deploy-check does it)")
    return found


def fab_static_root() -> str:
    import flask_appbuilder

    return str(Path(flask_appbuilder.__file__).parent)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":  # start it and wait (Ctrl-C stops everything): for trying the layout by hand
    with Stack() as stack:
        print(json.dumps(stack.describe(), indent=2))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

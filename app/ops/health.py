"""Probes for a load balancer and an orchestrator: cheap, unauthenticated, and saying nothing secret (no host,
user, version string or error text; only which check failed).

- `GET /healthz`: the process is alive and serving. It touches nothing else, so a database outage does not get
  every web process restarted by its supervisor.
- `GET /readyz`: this process can take traffic: PostgreSQL answers, its schema is at the migrations' head (a web
  process of a newer release waits for `flask db upgrade`), and Redis answers when REDIS_URL is set. 200 when all
  hold, else 503 with Retry-After; the body names each check's state.

The database check runs on a one-connection pool of its own with short timeouts, so a probe never waits behind
busy requests for a connection, and never hangs on an unreachable host.
"""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify

bp = Blueprint("ops_health", __name__)
PROBE_TIMEOUT_SECONDS = 2


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    checks = readiness()
    ready = all(state in ("ok", "not_configured") for state in checks.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(current_app.config.get("OUTAGE_RETRY_AFTER_SECONDS", 5))
    return response


def readiness() -> dict[str, str]:
    """{"database": ok|unreachable, "migrations": ok|behind|unknown, "redis": ok|unreachable|not_configured}."""
    checks = {}
    try:
        current = database_revisions()
        checks["database"] = "ok"
        checks["migrations"] = "ok" if current == migration_heads() else "behind"
    except Exception:
        checks["database"] = "unreachable"
        checks["migrations"] = "unknown"
    checks["redis"] = redis_state()
    return checks


def database_revisions() -> set[str]:
    from sqlalchemy import text

    with probe_engine().connect() as conn:
        return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}


def migration_heads() -> set[str]:
    """The revisions of the code this process runs (read once from migrations/)."""
    heads = current_app.extensions.get("kameng_migration_heads")
    if heads is None:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        directory = current_app.extensions["migrate"].directory
        config = Config()
        config.set_main_option("script_location", str(directory))
        heads = current_app.extensions["kameng_migration_heads"] = set(ScriptDirectory.from_config(config).get_heads())
    return heads


def probe_engine():
    """A small pool for probes and metrics beside the request pool (PostgreSQL), or the app's engine (SQLite)."""
    from app.extensions import db

    engines = current_app.extensions.setdefault("kameng_probe_engines", {})
    url = db.engine.url
    if url not in engines:
        if url.get_backend_name() != "postgresql":
            engines[url] = db.engine
        else:
            from sqlalchemy import create_engine

            engines[url] = create_engine(
                url, pool_size=1, max_overflow=2, pool_timeout=PROBE_TIMEOUT_SECONDS, pool_pre_ping=True,
                pool_recycle=300,
                connect_args={"connect_timeout": PROBE_TIMEOUT_SECONDS,
                              "options": f"-c statement_timeout={PROBE_TIMEOUT_SECONDS * 1000}"})
    return engines[url]


def redis_state() -> str:
    client = probe_redis()
    if client is None:
        return "not_configured"
    try:
        return "ok" if client.ping() else "unreachable"
    except Exception:
        return "unreachable"


def probe_redis():
    """A Redis client with short timeouts for probes and metrics (the job client waits up to 30 s by design)."""
    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    clients = current_app.extensions.setdefault("kameng_probe_redis", {})
    if url not in clients:
        from redis import Redis

        clients[url] = Redis.from_url(url, socket_timeout=PROBE_TIMEOUT_SECONDS,
                                      socket_connect_timeout=PROBE_TIMEOUT_SECONDS)
    return clients[url]


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

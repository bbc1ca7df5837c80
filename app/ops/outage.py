"""Outages are answered, not crashed.

While PostgreSQL (or Redis, where a request cannot do without it) is unreachable, a request ends in an exception
from the driver. Unhandled, that is a 500 with a traceback in the log, which a reseller's integration must read as
"maybe charged, maybe not". Here every such exception becomes 503 with `Retry-After`:

- JSON APIs (Open API, storefront and shop APIs, payment and supplier notifications, Dash callbacks, probes)
  answer `{"error": {"code": "unavailable", "message": ...}}`;
- pages answer a small maintenance page that needs nothing but the template (no menu, no user, no database).

A 503 is safe to retry: the Open API is idempotent per out_trade_no, notifications per trade number, so a retry
after the outage either finds the order the first attempt committed or makes it once.

Connections come back by themselves: the pool pings a connection that sat idle before handing it out and replaces
a dead one (`app.extensions.ping_idle_connections`); a connection attempt gives up after
`DATABASE_CONNECT_TIMEOUT` seconds instead of hanging a worker on an unreachable host.
"""
from __future__ import annotations

import logging
import re
import threading
import time

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import InternalServerError

log = logging.getLogger(__name__)

# Paths whose callers read JSON (machines), not pages.
JSON_PATHS = re.compile(r"^/(open/|shop/api/|s/[^/]+/api/|api/|pay/(notify|refund-notify|status)/|supplier/notify/"
                        r"|dashboards/.*_dash-|readyz|healthz|metrics)")


def outage_kind(exc: BaseException | None) -> str | None:
    """'database' or 'redis' when `exc` (or what caused it) says a backing service is unreachable, else None.

    A disconnect, a refused connection, a server shutting down or starting up, an exhausted pool and a
    serialization failure all mean "try again shortly"; a bug in a query (ProgrammingError, IntegrityError...) is
    not an outage and stays a 500."""
    import psycopg
    import redis.exceptions
    from sqlalchemy import exc as sa_exc

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                            psycopg.OperationalError, psycopg.InterfaceError)):
            return "database"
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return "database"
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return "redis"
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def wants_json() -> bool:
    if JSON_PATHS.match(request.path) or request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def unavailable_response(kind: str) -> Response:
    """The 503 answer for the current request (JSON or the maintenance page), with Retry-After."""
    from flask_babel import gettext

    retry_after = int(current_app.config.get("OUTAGE_RETRY_AFTER_SECONDS", 5))
    if wants_json():
        response = jsonify({"error": {"code": "unavailable",
                                      "message": "service temporarily unavailable; retry after "
                                                 f"{retry_after} s (the same request is safe to repeat)"}})
    else:
        try:
            body = render_template("kameng/maintenance.html", retry_after=retry_after)
        except Exception:  # the page must not depend on anything that can be down with the database
            body = gettext("系统维护中，请稍后再试。")
        response = current_app.make_response(body)
        response.mimetype = "text/html"
    response.status_code = 503
    response.headers["Retry-After"] = str(retry_after)
    response.headers["Cache-Control"] = "no-store"
    # app.headers reads the signed-in user to decide on caching; the database may be what is down.
    request.environ["kameng.outage"] = kind
    from app.ops import metrics

    metrics.count_unavailable(kind)
    _log_throttled(kind)
    return response


def _handle_outage(exc: Exception):
    kind = outage_kind(exc)
    if kind is None:
        raise exc  # not an outage: Flask's usual 500 (logged with its traceback)
    _rollback_quietly()
    return unavailable_response(kind)


def _handle_internal_error(exc: InternalServerError):
    """An error raised outside a view (an after_request hook, an error handler) reaches Flask's 500 path: an
    outage there is a 503 too."""
    kind = outage_kind(exc.original_exception)
    if kind is None:
        return exc
    _rollback_quietly()
    return unavailable_response(kind)


def _rollback_quietly() -> None:
    from app.extensions import db

    try:
        db.session.rollback()
    except Exception:  # the connection is gone; the pool replaces it at the next checkout
        pass


class _Throttle:
    """One warning per kind and process every few seconds, with how many were answered since: an outage at a
    hundred requests a second must not bury the log."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.lock = threading.Lock()
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def due(self, kind: str) -> int | None:
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(kind, -1e9) < self.every:
                self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
                return None
            self.last[kind] = now
            return self.suppressed.pop(kind, 0)


_throttle = _Throttle()


def _log_throttled(kind: str) -> None:
    skipped = _throttle.due(kind)
    if skipped is not None:
        log.warning("%s unavailable: answering 503 to %s %s (%d more 503s since the last warning)", kind,
                    request.method, request.path, skipped)


def engine_options(config: dict) -> None:
    """Pool settings that survive a database restart, set before Flask-SQLAlchemy builds the engine: recycle idle
    connections and bound a connection attempt (PostgreSQL; its pings are `app.extensions.ping_idle_connections`,
    installed once the engine exists), ping before every use elsewhere (SQLite has no server: a ping costs nothing)."""
    uri = str(config.get("SQLALCHEMY_DATABASE_URI") or "")
    options = dict(config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    if uri.startswith(("postgresql", "postgres")):
        options.setdefault("pool_pre_ping", False)
        options.setdefault("pool_recycle", 300)
        options.setdefault("pool_timeout", int(config.get("DATABASE_POOL_TIMEOUT", 10)))
        connect_args = dict(options.get("connect_args") or {})
        connect_args.setdefault("connect_timeout", int(config.get("DATABASE_CONNECT_TIMEOUT", 5)))
        options["connect_args"] = connect_args
    else:
        options.setdefault("pool_pre_ping", True)
    config["SQLALCHEMY_ENGINE_OPTIONS"] = options


def init_app(app: Flask) -> None:
    from psycopg import InterfaceError as PgInterfaceError
    from psycopg import OperationalError as PgOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    for exc_class in (DBAPIError, PoolTimeoutError, PgOperationalError, PgInterfaceError, RedisConnectionError,
                      RedisTimeoutError):
        app.register_error_handler(exc_class, _handle_outage)
    app.register_error_handler(InternalServerError, _handle_internal_error)

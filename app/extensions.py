"""Extensions created without an app and joined in create_app()."""
from __future__ import annotations

import time

from flask_appbuilder.models.sqla import Model
from flask_appbuilder.models.sqla.base import SQLA
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect

# One metadata for FAB's ab_* tables and ours, so create_all and Alembic see both.
db = SQLA(model_class=Model)
migrate = Migrate()
# FAB's own forms carry CSRF tokens; this also guards our custom POST pages (buy, card import).
csrf = CSRFProtect()


def append_engine():
    """A small autocommit pool beside the request pool, for append-only records that must stay whatever the
    caller's transaction does (risk decisions, Open API nonces), each one statement. Separate so a request holding
    its connection never waits for a second one from its own pool (with as many busy requests as connections, it
    would never come). Asynchronous commit: the caller's own commit flushes the WAL too; only a refused request's
    record could be lost in a crash in the next fraction of a second. PostgreSQL only."""
    from flask import current_app
    from sqlalchemy import create_engine, event

    engines = current_app.extensions.setdefault("kameng_append_engines", {})
    request_engine = db.engine
    found = engines.get(request_engine)  # keyed by the engine itself: hashing its URL costs more than the lookup
    if found is not None:
        return found
    url = request_engine.url
    # Pinged only after sitting idle, as the request pool (app.ops.outage.ping_idle_connections): no round
    # trip per purchase, and a connection a restart killed is replaced before use.
    engine = create_engine(url, pool_size=2, max_overflow=20, pool_recycle=300, isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": 5})
    ping_idle_connections(engine)
    keep_prepared_statements(engine)

    @event.listens_for(engine, "connect")
    def _asynchronous_commit(dbapi_connection, _record) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO OFF")

    engines[request_engine] = engine
    return engine


def keep_prepared_statements(engine) -> None:
    """Roll back without making psycopg forget the statements it prepared on that connection (PostgreSQL).

    psycopg prepares a statement on a connection after 5 runs (the server parses and plans it once), but its
    `rollback()` drops every prepared statement of the connection and sends DEALLOCATE ALL, in case the rollback
    undid a table a statement refers to. Every request that ends without a commit (a read: a balance, a product list, an
    order query) rolls back, so on a worker serving reads and writes in turn no statement stayed prepared: each was
    parsed and planned again, and a DEALLOCATE ALL round trip came on top. The app changes no schema inside a
    request's transaction (migrations run in their own process), so the rollback here sends the same ROLLBACK and
    keeps the cache; anything unusual (a pipeline, psycopg's own transaction blocks) takes psycopg's rollback."""
    import psycopg
    from psycopg.pq import TransactionStatus

    plain = engine.dialect.do_rollback
    open_states = (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def do_rollback(dbapi_connection) -> None:
        conn = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        if (not isinstance(conn, psycopg.Connection) or conn.info.transaction_status not in open_states
                or conn._pipeline or conn._num_transactions or conn._tpc):
            plain(dbapi_connection)
            return
        with conn.lock:
            conn.wait(conn._exec_command(b"ROLLBACK"))

    engine.dialect.do_rollback = do_rollback


def ping_idle_connections(engine, idle_seconds: float = 1.0) -> None:
    """Ping a pooled connection before handing it out only when it has been idle for `idle_seconds`.

    `pool_pre_ping` pings on every checkout: a round trip on every request (measured: one of 18 per Open API
    purchase). A connection a database restart killed has been idle through the restart, so it is pinged and
    replaced; one in use as the server went away fails its statement, which answers 503 and invalidates every
    connection of the pool (SQLAlchemy's disconnect handling), so none of them is handed out afterwards."""
    from sqlalchemy import event
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection, record) -> None:
        record.info["kameng_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_when_idle(dbapi_connection, record, _proxy) -> None:
        since = record.info.get("kameng_idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return  # new, or back in the pool a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure: the pool replaces the connection (up to 3 tries)
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("ping failed")

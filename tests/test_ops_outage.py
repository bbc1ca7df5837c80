"""Probes and outages (app/ops): /healthz and /readyz; while PostgreSQL is unreachable every JSON API answers 503
`unavailable` with Retry-After and pages show the maintenance page (never a 500); after a real restart of a
PostgreSQL cluster of our own, connections come back by themselves; while Redis is down (a redis-server of our own)
cards are still sold, paid and looked up, and rate limits still hold.

The machine's shared PostgreSQL and Redis are never stopped: "down" is a closed port or a private server.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from types import SimpleNamespace

import pytest

from bench.services import PrivatePostgres, PrivateRedis, free_port
from tests.conftest import make_app
from tests.openapi_helpers import new_key, signed_call
from tests.payments_helpers import PASSWORD, sandbox_form, setup_sandbox, trade_no

pytestmark = pytest.mark.postgres_only
SECRET_WORDS = ("127.0.0.1", "postgres", "psycopg", "Traceback", "redis://", "OperationalError")


def assert_unavailable(response) -> dict:
    """503, Retry-After, the API error format with code `unavailable`, and nothing about the infrastructure."""
    text = response.get_data(as_text=True)
    assert response.status_code == 503, (response.status_code, text[:300])
    assert int(response.headers["Retry-After"]) > 0
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == "unavailable"
    assert not [w for w in SECRET_WORDS if w in text], text
    return body


# --- probes ------------------------------------------------------------------------------------------------------

def test_healthz_answers_without_anything_else(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}
    assert r.headers["X-Request-ID"]


def test_readyz_checks_database_migrations_and_redis(app, client, redis_url):
    r = client.get("/readyz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok",
                                                          "redis": "not_configured"}}
    app.config["REDIS_URL"] = redis_url
    try:
        assert client.get("/readyz").get_json()["checks"]["redis"] == "ok"
        app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        r = client.get("/readyz")
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert r.get_json() == {"status": "unavailable", "checks": {"database": "ok", "migrations": "ok",
                                                                    "redis": "unreachable"}}
    finally:
        app.config["REDIS_URL"] = None


def test_readyz_refuses_a_schema_behind_the_code(app, client):
    from app.ops.health import database_revisions, migration_heads

    assert database_revisions() == migration_heads() and len(migration_heads()) == 1
    app.extensions["kameng_migration_heads"] = {"ffffffffffff"}  # a release whose migration has not run yet
    try:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.get_json()["checks"] == {"database": "ok", "migrations": "behind", "redis": "not_configured"}
    finally:
        app.extensions.pop("kameng_migration_heads")


# --- a database nobody answers for -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def down_app():
    """The app on a PostgreSQL address where nothing listens (what a stopped server looks like)."""
    # As production starts its processes (deploy/kameng.env): nothing at start-up needs the database.
    flask_app = make_app(f"postgresql://postgres@127.0.0.1:{free_port()}/kameng", FAB_CREATE_DB=False,
                         FAB_UPDATE_PERMS=False, TESTING=False)
    return flask_app


def test_database_down_probes(down_app):
    client = down_app.test_client()
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert r.get_json() == {"status": "unavailable", "checks": {"database": "unreachable", "migrations": "unknown",
                                                                "redis": "not_configured"}}


def test_database_down_every_json_api_answers_503_unavailable(down_app):
    from app.openapi import signing

    client = down_app.test_client()
    body = json.dumps({"out_trade_no": "T1", "product_id": 1, "quantity": 1}).encode()
    headers = signing.signed_headers("ak_nobody", "secret", "POST", "/open/v1/orders", body)
    assert_unavailable(client.post("/open/v1/orders", data=body, headers={**headers,
                                                                          "Content-Type": "application/json"}))
    headers = signing.signed_headers("ak_nobody", "secret", "GET", "/open/v1/balance", b"")
    assert_unavailable(client.get("/open/v1/balance", headers=headers))
    assert_unavailable(client.get("/shop/api/products"))
    assert_unavailable(client.post("/shop/api/orders", json={"product_id": 1, "quantity": 1, "contact": "13800000000",
                                                             "query_password": PASSWORD, "channel": "sandbox"}))
    assert_unavailable(client.post("/shop/api/lookup", json={"order_no": "K1", "query_password": PASSWORD}))
    assert_unavailable(client.post("/pay/notify/sandbox", data=sandbox_form("K1", trade_no(), 100)))
    assert_unavailable(client.post("/supplier/notify/1", data=b"{}", content_type="application/json"))
    # Any other caller that asks for JSON gets JSON too.
    assert_unavailable(client.get("/portal/buy", headers={"Accept": "application/json"}))


def test_database_down_pages_show_the_maintenance_page(down_app):
    client = down_app.test_client()
    pages = [client.get(path) for path in ("/", "/login/", "/shop/", "/portal/buy", "/portal/my-orders/list/",
                                            "/trust/", "/orders/list/")]
    pages.append(client.post("/shop/lookup", data={"order_no": "K1", "query_password": PASSWORD}))
    for r in pages:
        path = r.request.path
        text = r.get_data(as_text=True)
        assert r.status_code == 503, (path, r.status_code, text[:200])
        assert r.mimetype == "text/html" and "系统维护中" in text, path
        assert int(r.headers["Retry-After"]) > 0 and r.headers["Cache-Control"] == "no-store"
        assert "Content-Security-Policy" in r.headers  # the security headers are still there
        assert not [w for w in SECRET_WORDS if w in text], (path, text)


# --- a real PostgreSQL restart -----------------------------------------------------------------------------------

def _copy_schema(source_url: str, target_url: str) -> None:
    """The migrated test schema (and its alembic version) into a database of the private cluster."""
    dump = subprocess.run(["pg_dump", "--schema-only", "--no-owner", source_url], capture_output=True, check=True)
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", target_url], input=dump.stdout, capture_output=True,
                   check=True)
    data = subprocess.run(["pg_dump", "--data-only", "-t", "alembic_version", "-t", "cache_version", source_url],
                          capture_output=True, check=True)
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", target_url], input=data.stdout, capture_output=True,
                   check=True)


def test_database_restart_answers_503_then_recovers_by_itself(pg_url):
    """Resellers buying while PostgreSQL restarts: 503s during the outage (never a 500); after the start the same
    request succeeds within seconds without restarting anything; the retried purchase is made exactly once."""
    from app.extensions import db
    from app.ledger.invariants import check_ledger
    from app.ledger.service import ensure_platform_accounts
    from app.orders.models import Order
    from tests import factories as f

    with PrivatePostgres() as pg:
        url = pg.create_database("kameng")
        _copy_schema(pg_url, url)
        flask_app = make_app(url, TESTING=False)
        with flask_app.app_context():
            flask_app.appbuilder.sm.create_db()
            ensure_platform_accounts()
            db.session.commit()
            buyer = f.agent(balance=1_000_000)
            product = f.product(secrets=20, face_price=1000, cost=800)
            key, secret = new_key(buyer)
            key = SimpleNamespace(app_key=key.app_key)  # plain values: the test reads none from a stopped server
            product_id = product.id
            client = flask_app.test_client()

            def buy(out_trade_no: str):
                return signed_call(client, key, secret, "POST", "/open/v1/orders",
                                   {"out_trade_no": out_trade_no, "product_id": product_id, "quantity": 1})

            r = buy("before")
            assert r.status_code == 201, r.get_json()
            statuses = []
            pg.stop()
            for _ in range(3):
                r = buy("during")
                statuses.append(r.status_code)
                assert_unavailable(r)
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200
            pg.start()
            started = time.monotonic()
            while True:  # the reseller retries the same order after Retry-After; here at once
                r = buy("during")
                statuses.append(r.status_code)
                if r.status_code != 503:
                    break
                assert time.monotonic() - started < 5, "not recovered within 5 s"
                time.sleep(0.1)
            assert r.status_code == 201, r.get_json()
            assert r.get_json()["status"] == "delivered" and len(r.get_json()["card_secrets"]) == 1
            assert buy("during").status_code == 200  # the idempotent retry finds the same order
            assert client.get("/readyz").status_code == 200
            assert 500 not in statuses
            db.session.rollback()
            assert db.session.query(Order).filter_by(out_trade_no="during").count() == 1
            assert check_ledger() == []
            db.session.remove()
            db.engine.dispose()
            from app.extensions import append_engine

            append_engine().dispose()


# --- Redis down while selling ------------------------------------------------------------------------------------

def test_redis_down_cards_are_sold_paid_and_looked_up_and_limits_hold(app, pg_url):
    """A redis-server of our own behind the jobs, the rate limits and the risk counters is stopped: the Open API
    and the storefront still sell and deliver cards, a channel's notification is still taken, lookups still show
    the secrets, and the lookup limit still holds (counted in memory meanwhile). Once Redis is back the outbox
    sweep hands over what waited."""
    from app.extensions import db
    from app.ledger.invariants import check_ledger
    from app.outbox.models import OutboxMessage
    from tests import factories as f
    from workers import jobs

    with PrivateRedis() as redis_server:
        flask_app = make_app(pg_url, REDIS_URL=redis_server.url(), RATELIMIT_ENABLED=True,
                             RATELIMIT_STORAGE_URI=redis_server.url(1), SHOP_LOOKUP_RATE_LIMIT="5 per minute",
                             FAB_CREATE_DB=False, FAB_UPDATE_PERMS=False, TESTING=False)
        with flask_app.app_context():
            buyer = f.agent(balance=1_000_000)
            product = f.product(secrets=20, face_price=1000, cost=800)
            setup_sandbox()
            key, secret = new_key(buyer)
            client = flask_app.test_client()
            assert client.get("/readyz").get_json()["checks"]["redis"] == "ok"
            redis_server.stop()

            assert client.get("/readyz").get_json()["checks"]["redis"] == "unreachable"
            r = signed_call(client, key, secret, "POST", "/open/v1/orders",
                            {"out_trade_no": uuid.uuid4().hex, "product_id": product.id, "quantity": 1,
                             "notify_url": "http://127.0.0.1:9/notify"})
            assert r.status_code == 201, r.get_json()
            assert r.get_json()["status"] == "delivered" and len(r.get_json()["card_secrets"]) == 1
            r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1,
                                                      "contact": "13800000000", "query_password": PASSWORD,
                                                      "channel": "sandbox"})
            assert r.status_code == 201, r.get_json()
            order_no, amount = r.get_json()["order_no"], r.get_json()["amount"]
            r = client.post("/pay/notify/sandbox", data=sandbox_form(order_no, trade_no(), amount))
            assert r.status_code == 200 and r.get_data(as_text=True) == "success"
            answers = [client.post("/shop/api/lookup", json={"order_no": order_no, "query_password": PASSWORD})
                       for _ in range(6)]
            assert [a.status_code for a in answers] == [200] * 5 + [429]
            assert answers[0].get_json()["status"] == "delivered" and len(answers[0].get_json()["card_secrets"]) == 1

            # The callback waits in the outbox; the sweep during the outage fails softly, after it hands over.
            db.session.rollback()
            pending = db.session.query(OutboxMessage).filter_by(status="pending").count()
            assert pending == 1
            assert jobs.sweep_outbox() == 1
            redis_server.start()
            assert jobs.sweep_outbox() == 1
            from workers.queues import get_queue

            assert get_queue("high").count == 1
            assert check_ledger() == []
            db.session.remove()


def test_a_worker_registers_again_after_redis_lost_it(app, redis_url):
    """Redis restarted without persistence forgets every worker; RQ registers a worker only at birth, so it would
    work on unseen by the jobs page and kameng_workers. Its next heartbeat registers it again."""
    from redis import Redis
    from rq import Worker

    from workers.queues import get_queue
    from workers.runner import AppWorker

    app.config["REDIS_URL"] = redis_url
    try:
        connection = Redis.from_url(redis_url)
        worker = AppWorker([get_queue("high")], connection=connection)
        worker.register_birth()
        assert Worker.count(connection=connection) == 1
        connection.flushdb()  # what a restart of a Redis that keeps nothing leaves
        assert Worker.count(connection=connection) == 0
        worker.heartbeat()
        assert [w.name for w in Worker.all(connection=connection)] == [worker.name]
        worker.heartbeat()  # registered: an ordinary heartbeat
        assert Worker.count(connection=connection) == 1
        worker.register_death()
    finally:
        app.config["REDIS_URL"] = None



# --- pings ------------------------------------------------------------------------------------------------------

def test_a_rollback_keeps_the_statements_the_connection_prepared(app):
    """Requests that only read end in a rollback. psycopg's own rollback drops every statement it prepared on the
    connection (DEALLOCATE ALL), so on a worker serving reads and writes in turn nothing stayed prepared; the app's
    rollback keeps them. It still undoes what the transaction wrote, and ends an aborted transaction."""
    from sqlalchemy.exc import DBAPIError

    from app.extensions import db

    name = f"prep-{uuid.uuid4().hex[:12]}"
    count = "SELECT count(*) FROM category WHERE name = %(name)s"
    prepared = "SELECT count(*) FROM pg_prepared_statements"
    with db.engine.connect() as conn:
        for _ in range(6):  # psycopg prepares a statement on its sixth run
            conn.exec_driver_sql(count, {"name": name})
        conn.exec_driver_sql("INSERT INTO category (name, sort_order, active) VALUES (%(name)s, 0, true)",
                             {"name": name})
        before = conn.exec_driver_sql(prepared).scalar()
        assert before >= 1
        conn.rollback()
        assert conn.exec_driver_sql(count, {"name": name}).scalar() == 0  # the insert is undone
        assert conn.exec_driver_sql(prepared).scalar() >= before  # and the server still holds the statements
        with pytest.raises(DBAPIError):
            conn.exec_driver_sql("SELECT 1 / 0")
        conn.rollback()
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        conn.rollback()


def test_a_pooled_connection_is_pinged_only_after_sitting_idle(app, monkeypatch):
    """A connection used a moment ago is handed out without a ping (a ping on every checkout is a round trip on
    every request); one idle for a second is pinged first, so one a database restart killed is replaced."""
    from app.extensions import db

    pings = []
    real_ping = db.engine.dialect.do_ping
    monkeypatch.setattr(db.engine.dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))
    for _ in range(3):
        with db.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    assert len(pings) <= 1  # at most the first checkout, if the pooled connection had sat idle before this test
    pings.clear()
    time.sleep(1.1)
    with db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert pings == [1]


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_after_an_outage_the_sweep_reads_only_the_waiting_messages(app):
    """A backlog after a Redis outage: the sweep's statement, run as sent, reads the waiting messages through the
    (status, next_attempt_at) index and none of the finished ones before them."""
    from sqlalchemy import text

    from app.extensions import db
    from tests.plan_helpers import plan_nodes, statements_sent
    from workers import jobs

    # given 100,000 finished messages and, after them, 3,000 waiting since the outage, with fresh statistics
    db.session.execute(text(
        "INSERT INTO outbox_message (topic, key, payload, status, attempts, next_attempt_at, created_at) "
        "SELECT 'backlog', 'backlog-' || n, '{}', CASE WHEN n <= 100000 THEN 'done' ELSE 'pending' END, 0, "
        "now() AT TIME ZONE 'UTC' - interval '1 hour', now() AT TIME ZONE 'UTC' - interval '1 hour' "
        "FROM generate_series(1, 103000) AS n"))
    db.session.commit()
    db.session.execute(text("ANALYZE outbox_message"))
    db.session.commit()

    # when the sweep runs (its SELECT captured as sent)
    with statements_sent("FROM outbox_message") as sent:
        assert jobs.sweep_outbox() == 500

    # then it handed over a batch of 500, and its statement reads only waiting messages
    [(statement, parameters)] = [(s, p) for s, p in sent if s.lstrip().startswith("SELECT outbox_message.id")
                                 and "LIMIT" in s]
    nodes = plan_nodes(statement, parameters)
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert indexes == {"ix_outbox_status_next"}, nodes
    heap = [n for n in nodes if n.get("Relation Name") == "outbox_message"]
    assert heap and all(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) <= 3000 for n in heap), heap

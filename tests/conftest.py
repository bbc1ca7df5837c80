"""Fixtures: a real PostgreSQL database (migrated with Alembic) and real Redis; a SQLite app for the subset.

Each test starts from empty domain tables (FAB's roles and permissions stay), builds its data with
tests.factories, and ends with the ledger invariant check.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Only KAMENG_ENV=development runs on the built-in keys (config.settle_environment); tests are development.
os.environ["KAMENG_ENV"] = "development"

import psycopg
import pytest
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("KAMENG_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/kameng_test")
REDIS_URL = os.environ.get("KAMENG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _per_worker(pg_url: str, redis_url: str, worker: str | None) -> tuple[str, str]:
    """Under pytest-xdist (`-n N`, worker "gwK") each worker has a database and a Redis database of its own: the
    database's name gets "_gwK", the Redis database number goes down by 7·K (15, 8, 1: clear of the benches' 11-14,
    which a bench run beside the suite flushes). Alone, both as given."""
    if not worker:
        return pg_url, redis_url
    k = int(worker.removeprefix("gw"))
    base, _, query = pg_url.partition("?")
    redis_base, _, number = redis_url.rpartition("/")
    if not number.isdigit() or int(number) < 7 * k:
        raise RuntimeError(f"KAMENG_TEST_REDIS_URL must end in a database number of at least {7 * k} for worker "
                           f"{worker}: {redis_url}")
    return f"{base}_{worker}" + (f"?{query}" if query else ""), f"{redis_base}/{int(number) - 7 * k}"


PG_URL, REDIS_URL = _per_worker(PG_URL, REDIS_URL, os.environ.get("PYTEST_XDIST_WORKER"))
# Simulators and receivers listen on 127.0.0.1, also for outbound calls made outside an app context (config.py reads
# this at import); tests/test_outbound.py turns it off in the app's config to test the fence.
os.environ.setdefault("OUTBOUND_ALLOW_PRIVATE", "true")
# FAB's security tables keep the roles and permissions that start-up created.
KEEP_TABLES = {"ab_permission", "ab_view_menu", "ab_permission_view", "ab_role", "ab_permission_view_role",
               "alembic_version"}


def _recreate_pg_database(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _migrate(url: str) -> None:
    """Build the schema the way production does: Alembic, with FAB's create_all off."""
    from flask_migrate import upgrade

    from app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": _sqlalchemy_url(url), "FAB_CREATE_DB": False,
                      "FAB_UPDATE_PERMS": False})
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


def make_app(url: str, **overrides):
    from app import create_app

    config = {
        "KAMENG_ENV": "development",
        "SQLALCHEMY_DATABASE_URI": _sqlalchemy_url(url),
        "TESTING": True,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "AUTH_RATE_LIMITED": False,
        "REDIS_URL": None,
        "SERVER_NAME": None,
        "OUTBOUND_ALLOW_PRIVATE": True,  # see the environment default above
    }
    config.update(overrides)
    flask_app = create_app(config)
    # Tests keep one app context open while several clients make requests in it, so Flask-Login's per-context
    # cache (g._login_user) would hand one client's user to the next. In production each request has its own
    # context; reproduce that here by forgetting the cached user before every request.
    flask_app.before_request_funcs.setdefault(None, []).insert(0, _forget_cached_login)
    return flask_app


def _forget_cached_login() -> None:
    from flask import g

    g.pop("_login_user", None)
    g.pop("user", None)


@pytest.fixture(scope="session")
def pg_url() -> str:
    _recreate_pg_database(PG_URL)
    _migrate(PG_URL)
    return PG_URL


@pytest.fixture(scope="session")
def sqlite_url():
    path = Path(tempfile.mkdtemp(prefix="kameng-test-")) / "test.db"
    url = f"sqlite:///{path}"
    _migrate(url)
    return url


@pytest.fixture(scope="session")
def _apps(request):
    return {}


def _get_app(kind: str, request, apps: dict):
    if kind not in apps:
        url = request.getfixturevalue("pg_url" if kind == "postgresql" else "sqlite_url")
        apps[kind] = make_app(url)
    return apps[kind]


def _clean(db) -> None:
    """Empty every table but the roles and permissions, ids restarting at 1.

    DELETE (children first) rather than one TRUNCATE of ~60 tables: a TRUNCATE swaps every table's files and
    syncs them at commit, 150-200 ms per test on PostgreSQL; deleting the few rows a test wrote takes a few ms.
    """
    engine = db.engine
    tables = [t for t in db.metadata.sorted_tables if t.name not in KEEP_TABLES]
    with engine.begin() as conn:
        for table in reversed(tables):
            conn.execute(table.delete())
        if engine.dialect.name == "postgresql":
            conn.execute(text(_RESTART_SEQUENCES))


# Every sequence owned by a column of a cleaned table back to its start (what TRUNCATE ... RESTART IDENTITY did).
_RESTART_SEQUENCES = ("SELECT count(setval(s.oid, 1, false)) FROM pg_class s"
                      " JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')"
                      " JOIN pg_class t ON t.oid = d.refobjid"
                      " WHERE s.relkind = 'S' AND t.relname NOT IN (" + ", ".join(f"'{n}'" for n in KEEP_TABLES) + ")")
_ROLES_MADE: set[int] = set()


@pytest.fixture(params=["postgresql"])
def app(request, _apps):
    """The app on PostgreSQL; parametrize with ["postgresql", "sqlite"] (indirect) to run on both."""
    flask_app = _get_app(request.param, request, _apps)
    from app.extensions import db
    from app.ledger.service import ensure_platform_accounts
    from app.settings.service import forget_cached

    with flask_app.app_context():
        _clean(db)
        forget_cached()
        if id(flask_app) not in _ROLES_MADE:  # built-in roles and permissions: kept across tests (KEEP_TABLES)
            flask_app.appbuilder.sm.create_db()
            _ROLES_MADE.add(id(flask_app))
        ensure_platform_accounts()
        db.session.commit()
    ctx = flask_app.app_context()
    ctx.push()
    try:
        yield flask_app
        db.session.rollback()
        from app.ledger.invariants import check_ledger

        problems = check_ledger()
        assert not problems, "ledger invariants broken after the test:\n" + "\n".join(problems)
    finally:
        db.session.remove()
        ctx.pop()


@pytest.fixture
def db(app):
    from app.extensions import db as _db

    return _db


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def redis_url():
    from redis import Redis

    conn = Redis.from_url(REDIS_URL)
    conn.flushdb()
    yield REDIS_URL
    conn.flushdb()


@pytest.fixture
def f(app):
    """Factories bound to the current app (see tests/factories.py)."""
    from tests import factories

    return factories

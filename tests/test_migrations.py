"""The models and the Alembic migrations agree, on PostgreSQL and on SQLite, and the migrations run both ways.

Autogenerate is what `flask db migrate` would write next: if it finds anything, a model changed without a
migration (or the other way round). Nothing is ignored: FAB's ab_* tables are created by our own migrations and
live in the same metadata (see app/extensions.py), so they are compared like ours. Should a FAB upgrade ever
produce differences that are purely FAB-internal, ignore only those, by table name, with the reason here.
"""
from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CheckConstraint, create_engine, inspect, text

from tests.conftest import PG_URL, _recreate_pg_database, _sqlalchemy_url

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _differences(connection, metadata) -> list:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return compare_metadata(context, metadata)


def _head() -> str:
    from alembic.config import Config

    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, f"the migrations have several heads, merge them: {heads}"
    return heads[0]


@BOTH
def test_autogenerate_finds_no_difference_between_models_and_migrations(app, db):
    with db.engine.connect() as connection:
        differences = _differences(connection, db.metadata)
    assert differences == [], "models and migrations differ; add a migration:\n" + "\n".join(map(str, differences))


@BOTH
def test_database_is_at_the_single_head(app, db):
    with db.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == _head()


@BOTH
def test_every_named_check_constraint_exists_in_the_database(app, db):
    """Autogenerate does not compare CHECK constraints, and the money rules rely on them: compare them here."""
    inspector = inspect(db.engine)
    missing = []
    for table in db.metadata.sorted_tables:
        wanted = {c.name for c in table.constraints if isinstance(c, CheckConstraint) and c.name}
        if not wanted:
            continue
        present = {c["name"] for c in inspector.get_check_constraints(table.name)}
        missing += [f"{table.name}.{name}" for name in sorted(wanted - present)]
    assert missing == []


def test_migrations_downgrade_to_base_and_upgrade_again(tmp_path):
    """A fresh database: upgrade to head, downgrade to nothing, upgrade again, and still match the models."""
    from flask_migrate import downgrade, upgrade

    from app.extensions import db
    from tests.conftest import make_app

    base, name = PG_URL.rsplit("/", 1)
    fresh = f"{base}/{name}_roundtrip"
    for url in (fresh, f"sqlite:///{tmp_path / 'roundtrip.db'}"):
        if url.startswith("postgresql"):
            _recreate_pg_database(url)
        app = make_app(url, FAB_CREATE_DB=False, FAB_UPDATE_PERMS=False)
        try:
            with app.app_context():
                upgrade(directory=str(MIGRATIONS))
                downgrade(directory=str(MIGRATIONS), revision="base")
                left = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
                assert left == set(), f"downgrade left tables behind: {sorted(left)}"
                upgrade(directory=str(MIGRATIONS))
                with db.engine.connect() as connection:
                    assert _differences(connection, db.metadata) == []
                    assert MigrationContext.configure(connection).get_current_revision() == _head()
                db.session.remove()
                db.engine.dispose()
        finally:
            if url.startswith("postgresql"):
                with psycopg.connect(base + "/postgres", autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}_roundtrip" WITH (FORCE)')


def test_a_fresh_database_has_exactly_the_model_tables(tmp_path):
    """Nothing created outside the migrations: the tables after `upgrade` are the metadata's, plus alembic's."""
    from flask_migrate import upgrade

    from app.extensions import db
    from tests.conftest import make_app

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    app = make_app(url, FAB_CREATE_DB=False, FAB_UPDATE_PERMS=False)
    with app.app_context():
        upgrade(directory=str(MIGRATIONS))
        tables = set(inspect(create_engine(_sqlalchemy_url(url))).get_table_names())
        assert tables == set(db.metadata.tables) | {"alembic_version"}
        db.engine.dispose()


def test_the_readmes_production_upgrade_command_runs_clean(tmp_path):
    """`FAB_CREATE_DB=False flask --app run db upgrade` on an empty database: FAB waits for its tables instead of
    logging a traceback per permission it cannot write (hundreds of them), and the next start writes them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{tmp_path / 'readme.db'}"
    env = {**os.environ, "DATABASE_URL": url, "KAMENG_ENV": "development", "FAB_CREATE_DB": "False"}
    env.pop("FAB_UPDATE_PERMS", None)
    root = Path(__file__).resolve().parent.parent
    flask = [sys.executable, "-m", "flask", "--app", "run"]
    done = subprocess.run([*flask, "db", "upgrade"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout and "ERROR" not in done.stderr, done.stderr[:2000]
    env.pop("FAB_CREATE_DB")  # the README's next command, as written there
    admin = subprocess.run([*flask, "fab", "create-admin", "--username", "admin", "--firstname", "A", "--lastname",
                            "B", "--email", "a@example.com", "--password", "a-long-password-1"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert admin.returncode == 0, admin.stderr[-2000:]
    assert "Traceback" not in admin.stderr and "ERROR" not in admin.stderr, admin.stderr[:2000]
    permissions = create_engine(_sqlalchemy_url(url)).connect().execute(
        text("SELECT count(*) FROM ab_permission_view")).scalar()
    assert permissions > 100

"""Backups that restore (tools/backup.py, `make backup`): a dump of a database that has sold cards, with its
schema revision, restored into a fresh database passes `flask kameng ledger-check` and `flask kameng chain verify`,
and the app serves from it (readiness, the reseller's order with its card secret decrypted). A damaged dump and a
non-empty target are refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.conftest import ROOT, make_app
from tests.openapi_helpers import new_key, signed_call

pytestmark = pytest.mark.postgres_only
TOOL = [sys.executable, str(ROOT / "tools" / "backup.py")]


def run_tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    clean.update(env or {})
    return subprocess.run([*TOOL, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=600)


def drop(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_backup_restores_into_a_fresh_database_that_checks_and_serves(app, client, f, pg_url, tmp_path):
    from app.chain import service as chain
    from app.ops.health import migration_heads

    buyer = f.agent(balance=100_000)
    product = f.product(face_price=1000, cost=800, secrets=3)
    key, secret = new_key(buyer)
    app_key = key.app_key
    r = signed_call(client, key, secret, "POST", "/open/v1/orders",
                    {"out_trade_no": uuid.uuid4().hex, "product_id": product.id, "quantity": 1})
    assert r.status_code == 201
    order_no, [card] = r.get_json()["order_no"], r.get_json()["card_secrets"]
    chain.seal()

    done = run_tool("backup", "--output-dir", str(tmp_path), env={"DATABASE_URL": pg_url})
    assert done.returncode == 0, done.stderr
    [dump] = tmp_path.glob("*.dump")
    manifest = json.loads(dump.with_suffix(".json").read_text())
    assert manifest["schema_revisions"] == sorted(migration_heads())
    assert manifest["schema_revisions"][0] in dump.name and manifest["bytes"] == dump.stat().st_size
    assert card.encode() not in dump.read_bytes()  # card secrets are in the dump encrypted only

    target = pg_url.rsplit("/", 1)[0] + "/" + pg_url.rsplit("/", 1)[1] + "_restored"
    drop(target)
    try:
        done = run_tool("restore", str(dump), "--database-url", target, "--check")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "kameng ledger-check: ok" in done.stdout and "ledger ok: all invariants hold" in done.stdout
        assert "kameng chain verify: ok" in done.stdout and "chain ok:" in done.stdout

        # Restoring again into the now full database is refused; a damaged dump too.
        done = run_tool("restore", str(dump), "--database-url", target)
        assert done.returncode == 1 and "already holds" in done.stderr
        damaged = tmp_path / "damaged.dump"
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
        damaged.with_suffix(".json").write_text(dump.with_suffix(".json").read_text())
        done = run_tool("restore", str(damaged), "--database-url", target + "_x")
        assert done.returncode == 1 and "does not match its manifest" in done.stderr

        # The app serves from the restored database: ready, and the reseller reads its order and card secret.
        restored = make_app(target, FAB_CREATE_DB=False, FAB_UPDATE_PERMS=False, TESTING=False)
        with restored.app_context():
            served = restored.test_client()
            assert served.get("/readyz").status_code == 200

            class Key:
                pass

            k = Key()
            k.app_key = app_key
            r = signed_call(served, k, secret, "GET", f"/open/v1/orders/{order_no}")
            assert r.status_code == 200 and r.get_json()["card_secrets"] == [card]
            from app.extensions import append_engine, db

            db.session.remove()
            append_engine().dispose()
            db.engine.dispose()
    finally:
        drop(target)
        drop(target + "_x")


def test_backup_refuses_what_it_cannot_do(tmp_path):
    done = run_tool("backup", "--output-dir", str(tmp_path), env={"DATABASE_URL": "sqlite:///x.db"})
    assert done.returncode == 1 and "PostgreSQL" in done.stderr
    done = run_tool("restore", str(tmp_path / "missing.dump"), "--database-url", "postgresql://x@127.0.0.1/y")
    assert done.returncode == 1 and "no such file" in done.stderr

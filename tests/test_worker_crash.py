"""A process killed mid-job leaves nothing half-done (top-ups: tests/test_recharge_crash.py). Here settlement and
card imports, each run by a real process that the test freezes at a known point (a row lock or an uncommitted
conflicting row held by the test's own connection), kills with SIGKILL, and then lets the next scheduled run finish:

- settlement: the batches committed before the kill stay settled, the one in progress is rolled back whole, the
  next run settles the rest once;
- a card import: the chunks committed before the kill stay, the `import-resume` job runs the batch again and it ends
  with every line once.

Payouts and refunds call an outside system: a real worker killed inside that call (the request lost on the way,
the answer still coming, the answer back but not committed) is tested in tests/test_payout_refund_crash.py; the
polls that close those windows by asking the bank or channel again in tests/test_withdrawal_poll.py,
tests/test_payment_gateways.py and tests/test_payments_hardening.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import func, select, update

from bench.services import wait_until
from tests.conftest import ROOT

pytestmark = pytest.mark.postgres_only


def start_job(pg_url: str, code: str, name: str) -> subprocess.Popen:
    """Python `code` run inside the app (against the test database) in a process of its own, as a worker would;
    its database sessions carry `name` as their application_name."""
    script = textwrap.dedent("""
        from app import create_app
        app = create_app({"FAB_CREATE_DB": False, "FAB_UPDATE_PERMS": False, "REDIS_URL": None})
        with app.app_context():
        """) + textwrap.indent(textwrap.dedent(code), "    ")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DATABASE_URL=pg_url, KAMENG_ENV="development", PYTHONUNBUFFERED="1", PGAPPNAME=name)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def blocked_by(conn: psycopg.Connection, name: str, holder_pid: int) -> bool:
    """Whether the job process (its sessions named `name`) waits on a lock the test's `holder_pid` holds."""
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                       "AND %s = ANY(pg_blocking_pids(pid))", (name, holder_pid)).fetchone()
    return row[0] > 0


def lock_waits(conn: psycopg.Connection, name: str) -> list:
    """What the job process waits on, and who holds it (for a failure message)."""
    return conn.execute("SELECT a.state, left(a.query, 160), pg_blocking_pids(a.pid), "
                        "(SELECT array_agg(b.application_name || ' ' || b.state || ': ' || left(b.query, 120)) "
                        " FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))) "
                        "FROM pg_stat_activity a WHERE a.application_name = %s", (name,)).fetchall()


def wait_blocked(proc: subprocess.Popen, conn: psycopg.Connection, name: str, holder_pid: int, what: str,
                 ready=lambda: True) -> None:
    try:
        wait_until(lambda: proc.poll() is None and ready() and blocked_by(conn, name, holder_pid), 90, what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; the job's sessions: {lock_waits(conn, name)}; exit {proc.poll()}") from None


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_settlement_killed_between_batches_finishes_once_on_the_next_run(app, f, pg_url):
    from app.extensions import db
    from app.ledger import service as ledger
    from app.ledger.invariants import check_ledger
    from app.network import settlement
    from app.network.models import Commission, SettlementRun
    from app.orders import service as orders

    # Two uplines, one commission each (A's first): with batches of one, batch 1 settles A's, batch 2 B's.
    product = f.product(secrets=4)
    uplines, amounts = [], []
    for _ in range(2):
        up = f.agent(tier_obj=f.tier(direct_commission_bp=1000, settle_days=0), with_user=False)
        buyer = f.agent(parent=up, tier_obj=f.tier(), with_user=False, balance=1_000_000)
        amounts.append(orders.place_wallet_order(buyer.id, product.id, 1).amount // 10)
        uplines.append(up)
    a, b = uplines
    a_id = a.id
    b_wallet = ledger.agent_account_code(b.id, "wallet")
    db.session.commit()

    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT id FROM ledger_account WHERE code = %s FOR UPDATE", (b_wallet,))  # batch 2 waits
        test_pid = holder.info.backend_pid
        name = f"kameng-crash-{uuid.uuid4().hex[:8]}"
        proc = start_job(pg_url, """
            from app.network import settlement
            settlement.settle(trigger="scheduled", batch_size=1)
            """, name)
        try:
            with psycopg.connect(pg_url, autocommit=True) as watcher:
                # Batch 1 committed (A's commission settled), batch 2 waiting on the test's lock.
                wait_blocked(proc, watcher, name, test_pid, "the settlement blocked in its second batch",
                             ready=lambda: watcher.execute("SELECT status FROM commission WHERE agent_id = %s",
                                                           (a_id,)).fetchone()[0] == "settled")
            kill(proc)
        finally:
            if proc.poll() is None:
                kill(proc)
        holder.rollback()

    db.session.rollback()
    # Batch 1 committed (A settled); batch 2 died with its transaction (B still pending, nothing posted for it).
    assert ledger.agent_balances(a.id) == {"wallet": amounts[0], "pending": 0, "frozen": 0}
    assert ledger.agent_balances(b.id) == {"wallet": 0, "pending": amounts[1], "frozen": 0}
    assert db.session.scalar(select(Commission.status).where(Commission.agent_id == b.id)) == "pending"
    [dead] = db.session.scalars(select(SettlementRun)).all()
    assert dead.status == "running" and dead.settled_count == 1  # the dead process never finished its record
    assert check_ledger() == []

    # The next scheduled run settles the rest, and only the rest.
    run = settlement.settle(trigger="scheduled")
    assert (run.status, run.settled_count, run.settled_amount) == ("done", 1, amounts[1])
    assert ledger.agent_balances(a.id)["wallet"] == amounts[0]
    assert ledger.agent_balances(b.id) == {"wallet": amounts[1], "pending": 0, "frozen": 0}
    assert settlement.settle().settled_count == 0
    assert check_ledger() == []


def test_card_import_killed_mid_way_is_resumed_and_counts_each_line_once(app, f, pg_url):
    from app import crypto
    from app.catalog import cards
    from app.catalog.models import CardImport, CardSecret
    from app.clock import utcnow
    from app.extensions import db
    from workers import jobs

    product = f.product()
    lines = [f"CRASH-{product.id}-{n:04d}" for n in range(6)]
    batch = cards.create_import(product.id, "\n".join(lines), None, "cli")
    batch_id = batch.id

    # The test holds an uncommitted row with the third line's (product, hash): the import's second chunk (lines 3-4,
    # chunks of two) waits on it, after the first chunk committed.
    with psycopg.connect(pg_url) as holder:
        holder.execute("INSERT INTO card_secret (product_id, secret_enc, secret_hash, masked, status, created_at) "
                       "VALUES (%s, %s, %s, %s, 'available', now())",
                       (product.id, crypto.encrypt(lines[2]), crypto.keyed_hash(product.id, lines[2]),
                        crypto.mask(lines[2])))
        test_pid = holder.info.backend_pid
        name = f"kameng-crash-{uuid.uuid4().hex[:8]}"
        proc = start_job(pg_url, f"""
            from app.catalog import cards
            cards.CHUNK = 2
            cards.run_import({batch_id})
            """, name)
        try:
            with psycopg.connect(pg_url, autocommit=True) as watcher:
                wait_blocked(proc, watcher, name, test_pid, "the import blocked in its second chunk")
            kill(proc)
        finally:
            if proc.poll() is None:
                kill(proc)
        holder.rollback()

    def batch_secrets() -> int:
        db.session.rollback()
        return db.session.scalar(select(func.count()).select_from(CardSecret).where(CardSecret.batch_id == batch_id))

    # What the dead process left: the first chunk, the batch still "running".
    assert batch_secrets() == 2
    assert db.session.get(CardImport, batch_id).status == "running"

    # Not yet: an import that ran inline may still be running for a while. Past the stall time, it is resumed.
    assert jobs.resume_imports() == []
    db.session.execute(update(CardImport).where(CardImport.id == batch_id)
                       .values(created_at=utcnow() - timedelta(minutes=jobs.IMPORT_STALL_AFTER_MINUTES + 1)))
    db.session.commit()
    assert jobs.resume_imports() == [batch_id]
    db.session.rollback()
    done = db.session.get(CardImport, batch_id)
    assert (done.status, done.added, done.duplicates, done.processed) == ("done", 6, 0, 6)
    assert batch_secrets() == 6
    stored = db.session.scalars(select(CardSecret.secret_enc).where(CardSecret.product_id == product.id))
    assert sorted(crypto.decrypt(token) for token in stored) == sorted(lines)
    assert jobs.resume_imports() == []  # done: left alone

"""Payouts and channel refunds through a killed worker: a real `flask kameng worker` process on PostgreSQL takes the
job from Redis and is killed with SIGKILL at a chosen point of its call to the outside system (served over real
HTTP by the bank or channel simulator):

- payout (代付), job `payout-<withdrawal_no>`: while the transfer request is on its way and never reaches the bank
  (held at the simulator's door, then lost), while the bank has booked it and its answer is still coming, and after
  the answer came back but before our commit (the job waits on the agent's frozen account, locked by the test);
- channel refund (Alipay), job `refund-<id>` from the support refund's outbox message: while the channel has paid
  the refund and its answer is still coming, and after the answer came back but before our commit (the job waits
  on the payment row, locked by the test).

Afterwards the scheduled jobs (withdrawal poll, refund poll, outbox sweep) and a re-run of the job end each one
exactly once: one transfer per withdrawal number at the bank and one `withdrawal:<no>:paid` journal, the frozen
amount released once; one refund per out_request_no at the channel, one refund journal, the order refunded once.
The ledger check, and for payouts the chain verify, pass.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, update

from app.clock import utcnow
from app.extensions import db
from app.ledger.invariants import check_ledger
from app.ledger.models import Journal
from app.ledger.service import agent_account_code, agent_balances, balance_of
from bench.services import wait_until
from tests import channel_sim_helpers as csh
from tests.conftest import ROOT
from tests.network_helpers import PAYOUT_KEY, idv_provider, payout_bank, verify
from tests.test_worker_crash import blocked_by, kill, lock_waits

pytestmark = pytest.mark.postgres_only
live = csh.live
gateway = csh.gateway

FLASK = str(Path(sys.executable).parent / "flask")
SLOW_ANSWER_S = 240  # the outside system's late answer: far past the kill (worker start-up can take a while)
CALL_TIMEOUT_S = 300  # our side waits longer still, so the worker is inside its call when it is killed
START_WITHIN_S = 120  # a worker process imports the whole app (FAB, Dash) before it takes its job


@contextlib.contextmanager
def worker(pg_url: str, redis_url: str, queue: str, **env: str):
    """`flask --app run kameng worker --burst --no-cron` on one queue, as production runs it; its database sessions
    carry a name of their own (application_name). Yields (process, name); killed at the end if still running."""
    name = f"kameng-crash-{uuid.uuid4().hex[:8]}"
    log = tempfile.NamedTemporaryFile("w", prefix="kameng-crash-worker-", suffix=".log", delete=False)
    full_env = dict(os.environ, DATABASE_URL=pg_url, REDIS_URL=redis_url, FAB_CREATE_DB="False",
                    FAB_UPDATE_PERMS="False", PYTHONUNBUFFERED="1", OUTBOUND_ALLOW_PRIVATE="true",
                    PGAPPNAME=name, **env)
    proc = subprocess.Popen([FLASK, "--app", "run", "kameng", "worker", "--burst", "--no-cron", "--queues", queue],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    proc.log_tail = lambda: Path(log.name).read_text(errors="replace")[-3000:]
    try:
        yield proc, name
    finally:
        if proc.poll() is None:
            kill(proc)
        Path(log.name).unlink(missing_ok=True)


def wait_inside(proc: subprocess.Popen, condition, what: str) -> None:
    """Until `condition` holds while the worker is still running (inside its job); then the test kills it."""
    try:
        wait_until(lambda: proc.poll() is None and condition(), START_WITHIN_S, what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; worker exit {proc.poll()}; its log:\n{proc.log_tail()}") from None


def wait_blocked_on(proc: subprocess.Popen, pg_url: str, name: str, holder_pid: int, what: str, ready) -> None:
    with psycopg.connect(pg_url, autocommit=True) as watcher:
        try:
            wait_inside(proc, lambda: ready() and blocked_by(watcher, name, holder_pid), what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe job's sessions: {lock_waits(watcher, name)}") from None


@contextlib.contextmanager
def row_locked(pg_url: str, sql: str, params: tuple):
    """A row locked FOR UPDATE by the test's own connection; yields that connection's backend pid."""
    with psycopg.connect(pg_url) as holder:
        assert holder.execute(sql, params).fetchone() is not None
        try:
            yield holder.info.backend_pid
        finally:
            holder.rollback()


def journal_keys(prefix: str) -> set[str]:
    db.session.rollback()
    return set(db.session.scalars(select(Journal.idempotency_key).where(Journal.idempotency_key.like(prefix + "%"))))


# --- payouts --------------------------------------------------------------------------------------------------

PAYOUT_WINDOWS = {
    # window: the card's last digit (7: the bank books the transfer, then answers only after slow_seconds)
    "lost_on_the_way": "8",
    "booked_answer_coming": "7",
    "answered_not_committed": "8",
}


@pytest.mark.parametrize("window", list(PAYOUT_WINDOWS))
def test_worker_killed_mid_payout_pays_once(app, f, pg_url, redis_url, monkeypatch, window):
    from app.chain import service as chain
    from app.network import withdrawals
    from app.network.models import Withdrawal
    from workers import jobs
    from workers.queues import get_queue

    # Given a verified agent's ¥200.00 withdrawal (1% fee), approved: its payout job waits in Redis.
    monkeypatch.setitem(app.config, "REDIS_URL", redis_url)
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    a = f.agent(tier_obj=f.tier(min_withdrawal=10000, withdrawal_fee_bp=100), balance=100000)
    with idv_provider(app, monkeypatch):
        verify(a, card_last=PAYOUT_WINDOWS[window])
    w = withdrawals.request_withdrawal(a.id, 20000)
    w_id, no, frozen = w.id, w.withdrawal_no, agent_account_code(a.id, "frozen")
    payouts0, fees0 = balance_of("platform:payouts"), balance_of("platform:fees")

    with payout_bank(app, monkeypatch, slow_seconds=SLOW_ANSWER_S) as bank:
        withdrawals.approve(w_id, None)
        assert get_queue("default").get_job_ids() == [f"payout-{no}"]
        env = {"PAYOUT_URL": app.config["PAYOUT_URL"], "PAYOUT_KEY": PAYOUT_KEY,
               "PAYOUT_TIMEOUT": str(CALL_TIMEOUT_S)}
        # When a worker takes the job and is killed at the chosen point of its transfer
        with worker(pg_url, redis_url, "default", **env) as (proc, name):
            if window == "lost_on_the_way":
                bank.hold()
                wait_inside(proc, lambda: bank.held == 1, "the transfer request held at the bank's door")
                kill(proc)
                bank.release(drop=True)  # the request dies on the way: the bank never books it
                wait_until(lambda: bank.held == 0, 10, "the held request dropped")
            elif window == "booked_answer_coming":
                wait_inside(proc, lambda: no in bank.transfers, "the transfer booked at the bank")
                kill(proc)
            else:
                with row_locked(pg_url, "SELECT id FROM ledger_account WHERE code = %s FOR UPDATE",
                                (frozen,)) as holder_pid:
                    wait_blocked_on(proc, pg_url, name, holder_pid, "the payout booking the bank's answer",
                                    ready=lambda: bank.executed == 1)
                    kill(proc)

        # Then what the dead worker left: the withdrawal paying, the amount still frozen, nothing paid in our books
        monkeypatch.setitem(app.config, "REDIS_URL", None)  # from here the jobs run inline
        db.session.rollback()
        assert db.session.get(Withdrawal, w_id).status == "paying"
        assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 20000}
        assert journal_keys(f"withdrawal:{no}:") == {f"withdrawal:{no}:freeze"}
        assert bank.executed == (0 if window == "lost_on_the_way" else 1)
        assert check_ledger() == []

        # The scheduled withdrawal poll asks the bank. A transfer it has booked is paid in our books now; one it
        # never received is still unknown at the first ask and is sent again (same number) at the next one.
        report = withdrawals.poll_paying()
        if window == "lost_on_the_way":
            assert (report["asked"], report["unknown"], bank.executed) == (1, 1, 0)
            report = withdrawals.poll_paying(now=utcnow() + timedelta(seconds=61))
            assert (report["asked"], report["resent"]) == (1, 1)
        else:
            assert (report["asked"], report["paid"]) == (1, 1)
        db.session.rollback()
        done = db.session.get(Withdrawal, w_id)
        assert done.status == "paid" and done.paid_at is not None and done.payout_ref.startswith("PAY")

        # A re-run of the job and later polls change nothing
        assert jobs.pay_withdrawal(w_id) == "paid"
        assert withdrawals.poll_paying(now=utcnow() + timedelta(hours=1))["paying"] == 0
        assert bank.executed == 1 and list(bank.transfers) == [no]
        assert bank.transfers[no]["amount"] == 19800 and bank.transfers[no]["status"] == "success"

    assert journal_keys(f"withdrawal:{no}:") == {f"withdrawal:{no}:freeze", f"withdrawal:{no}:paid"}
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 0}
    assert balance_of("platform:payouts") - payouts0 == 19800 and balance_of("platform:fees") - fees0 == 200
    assert check_ledger() == []
    report = chain.verify()
    assert report.ok, report.problems


# --- channel refunds ---------------------------------------------------------------------------------------------

def _paid_alipay_order(live, sim, f) -> str:
    product = f.product(face_price=2000, cost=1500, secrets=2)
    answer = csh.checkout(live, product, "alipay")
    assert csh.open_pay_url(answer["pay_url"], answer["order_no"]).status_code < 400
    sim.pay(answer["order_no"])
    csh.wait_for(lambda: csh.order_status(answer["order_no"]) == "delivered", what="the order delivered")
    return answer["order_no"]


def _journal_kinds(order_id: int) -> Counter:
    db.session.rollback()
    return Counter(db.session.scalars(select(Journal.kind).where(Journal.order_id == order_id)))


@pytest.mark.parametrize("window", ["refunded_answer_coming", "answered_not_committed"])
def test_worker_killed_mid_channel_refund_refunds_once(app, f, live, gateway, pg_url, redis_url, monkeypatch, window):
    from app.orders.models import Order
    from app.outbox.models import OutboxMessage
    from app.payments import refunds
    from app.payments.models import Payment, Refund
    from workers import jobs
    from workers.queues import get_queue

    # Given an order paid through Alipay (its notification reached the app over HTTP) and delivered
    sim = gateway("alipay", timeout=CALL_TIMEOUT_S)
    order_no = _paid_alipay_order(live, sim, f)
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    order_id, amount = order.id, order.amount
    payment = db.session.scalar(select(Payment).where(Payment.order_id == order_id))
    payment_id, trade_no = payment.id, payment.trade_no

    # When support refunds it (CLI) with Redis up: its outbox message becomes the job refund-<id> in Redis
    monkeypatch.setitem(app.config, "REDIS_URL", redis_url)
    result = app.test_cli_runner().invoke(args=["kameng", "refund", order_no, "--reason", "买家申请退款"])
    assert result.exit_code == 0, result.output
    refund = csh.refund_of(order_no)
    refund_id, out_refund_no = refund.id, refund.out_refund_no
    assert refund.status == "requested" and refund.attempts == 0
    assert get_queue("high").get_job_ids() == [f"refund-{refund_id}"]

    # and a worker takes the job and is killed at the chosen point of its call to the channel
    if window == "refunded_answer_coming":
        sim.behave(refund="timeout", refund_timeout_ms=SLOW_ANSWER_S * 1000)  # refunds now, answers late
    with worker(pg_url, redis_url, "high") as (proc, name):
        if window == "refunded_answer_coming":
            wait_inside(proc, lambda: [r["status"] for r in sim.refunds()] == ["succeeded"],
                        "the refund paid at the channel")
            kill(proc)
        else:
            with row_locked(pg_url, "SELECT id FROM payment WHERE id = %s FOR UPDATE", (payment_id,)) as holder_pid:
                wait_blocked_on(proc, pg_url, name, holder_pid, "the refund booking the channel's answer",
                                ready=lambda: [r["status"] for r in sim.refunds()] == ["succeeded"])
                kill(proc)
    sim.behave(refund="success")

    # Then what the dead worker left: the channel paid the buyer back; our refund is still open (claimed once),
    # the money still in buyer_funds, no refund journal
    monkeypatch.setitem(app.config, "REDIS_URL", None)  # from here the jobs run inline
    [at_channel] = sim.refunds()
    assert (at_channel["out_refund_no"], at_channel["amount"], at_channel["requests"]) == (out_refund_no, amount, 1)
    refund = csh.refund_of(order_no)
    assert (refund.status, refund.attempts) == ("requested", 1)
    assert db.session.get(Payment, payment_id).status == "refunding"
    at_kill = _journal_kinds(order_id)
    assert at_kill["refund"] == 0
    assert check_ledger() == []

    # The refund poll, once the claim has lapsed, asks again with the same out_request_no: the channel refunds
    # nothing more and says it is done; the ledger follows once
    assert refunds.poll_due()["due"] == 0  # claimed: not due before its backoff
    report = refunds.poll_due(now=utcnow() + timedelta(minutes=5))
    assert (report["due"], report["succeeded"]) == (1, 1)
    refund = csh.refund_of(order_no)
    assert refund.status == "succeeded" and refund.out_refund_no == out_refund_no
    assert db.session.get(Payment, payment_id).status == "refunded"
    assert db.session.get(Order, order_id).status == "refunded"

    # The outbox sweep re-runs the dead job (same id) later: nothing is due, nothing is asked
    db.session.execute(update(OutboxMessage).where(OutboxMessage.status == "pending")
                       .values(dispatched_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    assert jobs.sweep_outbox() == 1
    db.session.rollback()
    assert set(db.session.scalars(select(OutboxMessage.status).where(
        OutboxMessage.key == f"refund:{out_refund_no}:submit"))) == {"done"}
    assert jobs.poll_refunds()["due"] == 0

    [at_channel] = sim.refunds()
    assert (at_channel["out_refund_no"], at_channel["amount"], at_channel["status"]) == \
        (out_refund_no, amount, "succeeded")
    assert at_channel["requests"] == 2  # the dead call and the poll's, under one number: paid out once
    [channel_order] = [o for o in sim.orders() if o["out_trade_no"] == order_no]
    assert channel_order["refunded"] == amount
    assert _journal_kinds(order_id) - at_kill == Counter({"refund": 1})  # and nothing else since the kill
    assert journal_keys(f"refund:alipay:{trade_no}") == {f"refund:alipay:{trade_no}"}
    assert db.session.scalar(select(Refund.id).where(Refund.order_id == order_id, Refund.id != refund_id)) is None
    assert balance_of("platform:buyer_funds") == 0
    assert check_ledger() == []

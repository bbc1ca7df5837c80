"""The withdrawal-poll job over real HTTP with the bank simulator: a payout left paying by a timeout is resolved by
asking the bank (paid → booked once; failed → funds back; unknown → left, asked again only after a minute), and a
concurrent admin retry and poll book the result once."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditEntry
from app.clock import utcnow
from app.errors import KamengError
from app.extensions import db as _db
from app.ledger.models import Journal
from app.ledger.service import agent_balances, balance_of
from app.network import withdrawals
from app.network.models import Withdrawal
from tests.network_helpers import idv_provider, payout_bank, verify
from tests.test_withdrawals import run_worker


@pytest.fixture
def timed_out(app, f, monkeypatch, redis_url):
    """A verified agent (card ending in 7: the bank answers slowly) whose ¥200.00 withdrawal (1% fee) timed out."""
    monkeypatch.setitem(app.config, "REDIS_URL", redis_url)
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    monkeypatch.setitem(app.config, "PAYOUT_TIMEOUT", 1)
    a = f.agent(tier_obj=f.tier(min_withdrawal=10000, withdrawal_fee_bp=100), balance=100000)
    with idv_provider(app, monkeypatch):
        verify(a, card_last="7")
    w = withdrawals.request_withdrawal(a.id, 20000)
    return a, w


def _start(app, monkeypatch, a, w, slow_seconds=2.0):
    ctx = payout_bank(app, monkeypatch, slow_seconds=slow_seconds)
    bank = ctx.__enter__()
    withdrawals.approve(w.id, None)
    run_worker()
    w = _db.session.get(Withdrawal, w.id)
    assert w.status == "paying" and "超时" in w.failure_reason
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 20000}
    return ctx, bank


def _keys(no: str) -> set[str]:
    _db.session.rollback()
    return set(_db.session.scalars(select(Journal.idempotency_key).where(
        Journal.idempotency_key.like(f"withdrawal:{no}:%"))))


def _state(w_id: int) -> tuple:
    _db.session.rollback()
    w = _db.session.get(Withdrawal, w_id)
    return (w.status, _db.session.scalar(select(func.count()).select_from(Journal)),
            tuple(sorted(agent_balances(w.agent_id).items())))


def test_timeout_then_poll_finds_it_paid_ledger_exact_paid_once(app, timed_out, monkeypatch):
    a, w = timed_out
    payouts0, fees0 = balance_of("platform:payouts"), balance_of("platform:fees")
    ctx, bank = _start(app, monkeypatch, a, w)
    try:
        report = withdrawals.poll_paying()
        assert report == {"requeued": 0, "paying": 1, "asked": 1, "paid": 1, "failed": 0, "unknown": 0, "resent": 0}
        w = _db.session.get(Withdrawal, w.id)
        assert w.status == "paid" and w.paid_at and w.payout_ref.startswith("PAY") and w.failure_reason is None
        assert bank.executed == 1 and bank.queries == 1
        state = _state(w.id)
        # the poll again (now and an hour later), the payout job again: nothing more is asked, paid or posted
        assert withdrawals.poll_paying()["paying"] == 0
        assert withdrawals.poll_paying(now=utcnow() + timedelta(hours=1))["asked"] == 0
        assert withdrawals.pay(w.id) == "paid"
        assert _state(w.id) == state and bank.executed == 1 and bank.queries == 1
        with pytest.raises(KamengError):
            withdrawals.retry(w.id, None)
    finally:
        ctx.__exit__(None, None, None)
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 0}
    assert balance_of("platform:payouts") - payouts0 == 19800 and balance_of("platform:fees") - fees0 == 200
    assert _keys(w.withdrawal_no) == {f"withdrawal:{w.withdrawal_no}:freeze", f"withdrawal:{w.withdrawal_no}:paid"}
    polls = list(_db.session.scalars(select(AuditEntry).where(AuditEntry.action == "withdrawal.poll")))
    assert len(polls) == 1 and polls[0].target_id == str(w.id)


def test_timeout_then_poll_finds_it_failed_funds_returned(app, timed_out, monkeypatch):
    a, w = timed_out
    payouts0 = balance_of("platform:payouts")
    ctx, bank = _start(app, monkeypatch, a, w)
    try:
        bank.bounce(w.withdrawal_no)  # the payee bank returned the transfer
        assert withdrawals.poll_paying()["failed"] == 1
        w = _db.session.get(Withdrawal, w.id)
        assert w.status == "failed" and "退票" in w.failure_reason
        state = _state(w.id)
        withdrawals.poll_paying(now=utcnow() + timedelta(minutes=5))
        assert withdrawals.pay(w.id) == "failed"
        assert _state(w.id) == state and bank.queries == 1
    finally:
        ctx.__exit__(None, None, None)
    assert agent_balances(a.id) == {"wallet": 100000, "pending": 0, "frozen": 0}
    assert balance_of("platform:payouts") == payouts0
    assert _keys(w.withdrawal_no) == {f"withdrawal:{w.withdrawal_no}:freeze", f"withdrawal:{w.withdrawal_no}:release"}


def test_unknown_is_left_paying_asked_at_most_once_a_minute_and_sent_again_if_never_received(app, timed_out,
                                                                                            monkeypatch):
    a, w = timed_out
    monkeypatch.setitem(app.config, "PAYOUT_URL", "http://127.0.0.1:9")  # nothing listens: the payout never arrives
    monkeypatch.setitem(app.config, "PAYOUT_KEY", "k")
    withdrawals.approve(w.id, None)
    run_worker()
    assert _db.session.get(Withdrawal, w.id).status == "paying"
    with payout_bank(app, monkeypatch) as bank:
        assert withdrawals.poll_paying()["unknown"] == 1  # the bank never saw it: not found, not a failure
        assert bank.queries == 1
        state = _state(w.id)
        assert state[0] == "paying"
        assert withdrawals.poll_paying() == {"requeued": 0, "paying": 1, "asked": 0, "paid": 0, "failed": 0,
                                             "unknown": 0, "resent": 0}
        assert withdrawals.poll_paying(now=utcnow() + timedelta(seconds=30))["asked"] == 0
        assert bank.queries == 1 and _state(w.id) == state
        # still not found a minute later: it never reached the bank, and the payout job is queued again
        assert withdrawals.poll_paying(now=utcnow() + timedelta(seconds=61))["resent"] == 1
        assert bank.queries == 2 and bank.executed == 0 and _state(w.id) == state
        # the worker sends it under the same number (the card's slow answer times out again); the next poll finds
        # it paid
        run_worker()
        assert _state(w.id)[0] == "paying" and bank.executed == 1 and list(bank.transfers) == [w.withdrawal_no]
        assert withdrawals.poll_paying(now=utcnow() + timedelta(seconds=130))["paid"] == 1
        assert withdrawals.poll_paying(now=utcnow() + timedelta(hours=1))["paying"] == 0
        assert _state(w.id)[0] == "paid" and bank.executed == 1
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 0}


def test_concurrent_admin_retry_and_poll_book_once(app, timed_out, monkeypatch):
    a, w = timed_out
    ctx, bank = _start(app, monkeypatch, a, w)
    wid = w.id  # read here: touching an expired instance from a thread would use this thread's session
    results, errors = [], []

    def run(fn):
        with app.app_context():
            try:
                results.append(fn())
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                _db.session.remove()

    try:
        threads = [threading.Thread(target=run, args=(lambda: withdrawals.pay(wid),)) for _ in range(3)]
        threads += [threading.Thread(target=run, args=(lambda: withdrawals.poll_paying(),)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ctx.__exit__(None, None, None)
    assert not errors, errors
    assert _state(wid)[0] == "paid" and bank.executed == 1
    assert bank.queries <= 1  # one poller asks; the others see the row polled (or already paid)
    assert _keys(w.withdrawal_no) == {f"withdrawal:{w.withdrawal_no}:freeze", f"withdrawal:{w.withdrawal_no}:paid"}
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 0}


def test_poll_is_scheduled_every_minute_with_a_stable_name(app):
    from workers.jobs import poll_paying_withdrawals
    from workers.schedule import PERIODIC

    job = {p.name: p for p in PERIODIC}["withdrawal-poll"]
    assert job.func is poll_paying_withdrawals and app.config[job.interval_setting] == 60
    assert poll_paying_withdrawals() == {"requeued": 0, "paying": 0, "asked": 0, "paid": 0, "failed": 0, "unknown": 0,
                                         "resent": 0}


def test_an_approval_that_never_reached_a_worker_is_queued_again_by_the_poll(app, f, monkeypatch):
    """Redis down at approval: the withdrawal stays approved (nothing lost); the poll queues it once it is stale."""
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    a = f.agent(tier_obj=f.tier(min_withdrawal=10000, withdrawal_fee_bp=100), balance=100000)
    with idv_provider(app, monkeypatch):
        verify(a, card_last="8")
    w = withdrawals.request_withdrawal(a.id, 20000)
    with payout_bank(app, monkeypatch) as bank:
        monkeypatch.setitem(app.config, "REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
        withdrawals.approve(w.id, None)
        assert _db.session.get(Withdrawal, w.id).status == "approved" and bank.executed == 0
        monkeypatch.setitem(app.config, "REDIS_URL", None)  # back: jobs run inline
        assert withdrawals.poll_paying()["requeued"] == 0  # just approved: not stale yet
        later = utcnow() + withdrawals.REQUEUE_APPROVED_AFTER + timedelta(seconds=1)
        assert withdrawals.poll_paying(now=later)["requeued"] == 1
        _db.session.rollback()
        assert _db.session.get(Withdrawal, w.id).status == "paid" and bank.executed == 1
        assert withdrawals.poll_paying(now=later)["requeued"] == 0
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 0}

"""Withdrawals: every refusal writes nothing, concurrent requests never overdraw, review, payout by a real RQ worker
through the payout simulator over real HTTP, failures and rejects return the funds, a job run twice pays once."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditEntry
from app.errors import KamengError
from app.extensions import db as _db
from app.ledger.errors import InsufficientBalance
from app.ledger.models import Journal
from app.ledger.service import agent_balances, balance_of
from app.network import realname, withdrawals
from app.network.models import Withdrawal
from tests.network_helpers import idv_provider, payout_bank, verify


def run_worker():
    from workers.runner import run_worker as run

    run(["default"], burst=True, with_cron=False)
    _db.session.rollback()  # read what the worker committed


def counts() -> tuple[int, int]:
    _db.session.rollback()
    return (_db.session.scalar(select(func.count()).select_from(Withdrawal)),
            _db.session.scalar(select(func.count()).select_from(Journal)))


@pytest.fixture
def setup(app, f, monkeypatch, redis_url):
    """A verified agent with ¥1,000.00, a 1% fee, minimum ¥100.00; the provider and RQ on real Redis."""
    monkeypatch.setitem(app.config, "REDIS_URL", redis_url)
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    tier = f.tier(min_withdrawal=10000, withdrawal_fee_bp=100)

    def make(card_last="8", balance=100000, tier_obj=tier, verified=True):
        a = f.agent(tier_obj=tier_obj, balance=balance)
        if verified:
            with idv_provider(app, monkeypatch):
                verify(a, card_last=card_last)
        return a
    return make


def test_each_refusal_writes_nothing(app, f, setup, monkeypatch):
    a = setup()
    no_tier = setup(tier_obj=f.tier(may_withdraw=False))
    cases = [(no_tier.id, 20000, "tier_no_withdraw"), (setup(verified=False).id, 20000, "realname_required"),
             (a.id, 9999, "below_minimum"), (a.id, 100001, "insufficient_balance"), (a.id, 0, "invalid_request"),
             (a.id, "100", "invalid_request")]
    before = counts()
    for agent_id, amount, code in cases:
        with pytest.raises(KamengError) as exc:
            withdrawals.request_withdrawal(agent_id, amount)
        assert exc.value.code == code, (amount, exc.value.message)
    assert counts() == before
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 30000)
    withdrawals.request_withdrawal(a.id, 20000)
    before = counts()
    with pytest.raises(KamengError) as exc:
        withdrawals.request_withdrawal(a.id, 10001)
    assert exc.value.code == "daily_limit" and "每日提现限额" in exc.value.message
    assert counts() == before
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 20000}


def test_concurrent_requests_never_overdraw(app, setup):
    agent_id = setup(balance=100000).id  # read here, not from the threads (an expired instance loads lazily)
    results, errors = [], []

    def worker():
        with app.app_context():
            try:
                results.append(withdrawals.request_withdrawal(agent_id, 30000).id)
            except InsufficientBalance as exc:
                errors.append(exc)
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(errors) == 7
    _db.session.rollback()
    assert agent_balances(agent_id) == {"wallet": 10000, "pending": 0, "frozen": 90000}


def test_approve_worker_pays_ledger_exact(app, setup, monkeypatch):
    a = setup()
    w = withdrawals.request_withdrawal(a.id, 50000)
    assert (w.fee, w.net_amount, w.status) == (500, 49500, "pending_review")
    assert agent_balances(a.id)["frozen"] == 50000
    payouts0, fees0 = balance_of("platform:payouts"), balance_of("platform:fees")
    with payout_bank(app, monkeypatch) as bank:
        withdrawals.approve(w.id, None)
        run_worker()
        w = _db.session.get(Withdrawal, w.id)
        assert w.status == "paid" and w.paid_at and w.payout_ref.startswith("PAY")
        assert bank.executed == 1 and bank.transfers[w.withdrawal_no]["amount"] == 49500
        # the job again (directly and through RQ): nothing more is paid or posted
        assert withdrawals.pay(w.id) == "paid"
        withdrawals.schedule_payout(w.id, w.withdrawal_no)
        run_worker()
        assert bank.executed == 1
    assert agent_balances(a.id) == {"wallet": 50000, "pending": 0, "frozen": 0}
    assert balance_of("platform:payouts") - payouts0 == 49500 and balance_of("platform:fees") - fees0 == 500
    keys = set(_db.session.scalars(select(Journal.idempotency_key).where(
        Journal.idempotency_key.like(f"withdrawal:{w.withdrawal_no}:%"))))
    assert keys == {f"withdrawal:{w.withdrawal_no}:freeze", f"withdrawal:{w.withdrawal_no}:paid"}
    assert _db.session.scalar(select(AuditEntry.action).where(AuditEntry.target_id == str(w.id))) == \
        "withdrawal.approve"


def test_failed_payout_returns_funds(app, setup, monkeypatch):
    a = setup(card_last="4")  # the bank refuses cards ending in 4
    w = withdrawals.request_withdrawal(a.id, 20000)
    with payout_bank(app, monkeypatch) as bank:
        withdrawals.approve(w.id, None)
        run_worker()
        assert bank.executed == 0
    w = _db.session.get(Withdrawal, w.id)
    assert w.status == "failed" and "异常" in w.failure_reason
    assert agent_balances(a.id) == {"wallet": 100000, "pending": 0, "frozen": 0}
    assert withdrawals.pay(w.id) == "failed"


def test_timeout_is_not_a_failure_and_retry_resolves(app, setup, monkeypatch):
    a = setup(card_last="7")  # the bank answers slowly for cards ending in 7
    monkeypatch.setitem(app.config, "PAYOUT_TIMEOUT", 1)
    w = withdrawals.request_withdrawal(a.id, 20000)
    with payout_bank(app, monkeypatch, slow_seconds=2.5) as bank:
        withdrawals.approve(w.id, None)
        run_worker()
        w = _db.session.get(Withdrawal, w.id)
        assert w.status == "paying" and "超时" in w.failure_reason
        assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 20000}
        withdrawals.retry(w.id, None)
        run_worker()
        w = _db.session.get(Withdrawal, w.id)
        assert w.status == "paid" and w.failure_reason is None
        assert bank.executed == 1
    assert agent_balances(a.id) == {"wallet": 80000, "pending": 0, "frozen": 0}
    with pytest.raises(KamengError):
        withdrawals.retry(w.id, None)


def test_reject_returns_funds_and_needs_a_reason(app, setup):
    a = setup()
    w = withdrawals.request_withdrawal(a.id, 30000)
    with pytest.raises(KamengError):
        withdrawals.reject(w.id, None, "  ")
    withdrawals.reject(w.id, None, "银行卡信息需更新")
    w = _db.session.get(Withdrawal, w.id)
    assert w.status == "rejected" and w.review_reason == "银行卡信息需更新"
    assert agent_balances(a.id) == {"wallet": 100000, "pending": 0, "frozen": 0}
    with pytest.raises(KamengError):
        withdrawals.approve(w.id, None)
    entry = _db.session.scalar(select(AuditEntry).where(AuditEntry.action == "withdrawal.reject"))
    assert entry.reason == "银行卡信息需更新"


def test_screens_portal_own_only_and_manager_review(app, f, setup, monkeypatch):
    parent = setup()
    child = f.agent(parent=parent, tier_obj=parent.tier, balance=50000)
    with idv_provider(app, monkeypatch):
        verify(child, seq="901")
    cw = withdrawals.request_withdrawal(child.id, 20000)
    agent_client = f.login(app.test_client(), parent.name)
    page = agent_client.get("/portal/withdrawals/").get_data(as_text=True)
    assert "withdrawal-form" in page and cw.withdrawal_no not in page
    r = agent_client.post("/portal/withdrawals/", data={"amount": "150.00"})
    assert r.status_code == 302
    page = agent_client.get("/portal/withdrawals/").get_data(as_text=True)
    mine = _db.session.scalar(select(Withdrawal).where(Withdrawal.agent_id == parent.id))
    assert mine.amount == 15000 and mine.withdrawal_no in page and cw.withdrawal_no not in page
    assert agent_client.get("/withdrawal-review/").status_code in (302, 403)
    assert agent_client.post(f"/withdrawal-review/{cw.id}/approve").status_code in (302, 403)
    _db.session.rollback()
    assert _db.session.get(Withdrawal, cw.id).status == "pending_review"

    # Manager reads the queue but decides nothing; Finance (财务) approves and rejects
    f.user("mgr_" + parent.name, role="Manager")
    manager = f.login(app.test_client(), "mgr_" + parent.name)
    queue = manager.get("/withdrawal-review/").get_data(as_text=True)
    assert cw.withdrawal_no in queue and mine.withdrawal_no in queue
    assert manager.post(f"/withdrawal-review/{cw.id}/approve").status_code == 403
    assert manager.post(f"/withdrawal-review/{mine.id}/reject", data={"reason": "x"}).status_code == 403
    _db.session.rollback()
    assert {_db.session.get(Withdrawal, w).status for w in (cw.id, mine.id)} == {"pending_review"}
    f.user("fin_" + parent.name, role="Finance")
    finance = f.login(app.test_client(), "fin_" + parent.name)
    queue = finance.get("/withdrawal-review/").get_data(as_text=True)
    assert cw.withdrawal_no in queue and mine.withdrawal_no in queue
    assert realname.record_of(child.id).bank_card_masked in queue
    finance.post(f"/withdrawal-review/{mine.id}/reject", data={"reason": "资料不全"})
    with payout_bank(app, monkeypatch):
        finance.post(f"/withdrawal-review/{cw.id}/approve")
        run_worker()
    assert _db.session.get(Withdrawal, cw.id).status == "paid"
    assert _db.session.get(Withdrawal, mine.id).status == "rejected"
    actors = set(_db.session.scalars(select(AuditEntry.actor_id).where(AuditEntry.target_type == "withdrawal")))
    assert len(actors) == 1 and None not in actors
    assert manager.get("/withdrawal-records/list/").status_code == 200
    assert finance.get("/withdrawal-records/list/").status_code == 200
    assert agent_balances(parent.id) == {"wallet": 100000, "pending": 0, "frozen": 0}
    assert agent_balances(child.id) == {"wallet": 30000, "pending": 0, "frozen": 0}

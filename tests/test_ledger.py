"""The ledger: post_journal's rules, and `flask kameng ledger-check` on healthy and deliberately broken data."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from app.ledger import service as ledger
from app.ledger.errors import IdempotencyConflict, InsufficientBalance, LedgerError, UnbalancedJournal
from app.ledger.models import Account, Journal, Posting
from app.ledger.service import Line, agent_account_code
from app.orders import service as orders

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)


def _counts(db) -> tuple[int, int]:
    return (db.session.scalar(select(func.count()).select_from(Journal)),
            db.session.scalar(select(func.count()).select_from(Posting)))


def _wallet(a) -> str:
    return agent_account_code(a.id, "wallet")


# ---------------------------------------------------------------------------------------------------------------
# post_journal

@BOTH
@pytest.mark.parametrize("lines", [
    [("W", 100), ("platform:adjustments", -99)],  # off by one fen
    [("W", 100)],  # a single posting
    [("W", 100), ("W", -100)],  # nets to nothing on one account
    [],
], ids=["off-by-one", "single", "nets-to-zero", "empty"])
def test_unbalanced_journal_is_refused_and_writes_nothing(app, db, f, lines):
    a = f.agent(balance=500, with_user=False)
    before = _counts(db)
    with pytest.raises(UnbalancedJournal) as info:
        ledger.post_journal("test:unbalanced", "adjustment",
                            [Line(_wallet(a) if code == "W" else code, amount) for code, amount in lines])
    assert info.value.code == "unbalanced_journal"
    assert _counts(db) == before  # nothing flushed in this transaction either
    db.session.rollback()
    assert _counts(db) == before and f.wallet(a) == 500


@BOTH
def test_unknown_account_is_refused(app, db, f):
    before = _counts(db)
    with pytest.raises(UnbalancedJournal, match="unknown ledger accounts: agent:999999:wallet"):
        ledger.post_journal("test:unknown", "adjustment",
                            [Line("agent:999999:wallet", 100), Line("platform:adjustments", -100)])
    db.session.rollback()
    assert _counts(db) == before


@BOTH
@pytest.mark.parametrize("amount, other", [(100.7, -100.7), (0.5, -0.5), ("100", "-100"), (True, -1)], ids=repr)
def test_amounts_must_be_integer_fen(app, db, f, amount, other):
    """No floats where money flows: 100.7 must not be silently posted as 100, nor "100" or True taken as fen."""
    a = f.agent(with_user=False)
    before = _counts(db)
    with pytest.raises(LedgerError):
        ledger.post_journal("test:float", "adjustment", [Line(_wallet(a), amount), Line("platform:adjustments", other)])
    db.session.rollback()
    assert _counts(db) == before and f.wallet(a) == 0


@BOTH
def test_same_key_same_content_returns_the_first_journal(app, db, f):
    a = f.agent(with_user=False)
    first = ledger.post_journal("test:once", "adjustment", [Line(_wallet(a), 700), Line("platform:adjustments", -700)])
    db.session.commit()
    counts = _counts(db)
    # the same lines in another order, split differently, are the same content
    again = ledger.post_journal("test:once", "adjustment", [Line("platform:adjustments", -700), Line(_wallet(a), 300),
                                                            Line(_wallet(a), 400)])
    db.session.commit()
    assert again == first
    assert _counts(db) == counts
    assert f.wallet(a) == 700  # credited once


@BOTH
@pytest.mark.parametrize("change", ["amount", "account", "kind"])
def test_same_key_different_content_is_a_conflict(app, db, f, change):
    a, b = f.agent(with_user=False), f.agent(with_user=False)
    first = ledger.post_journal("test:key", "adjustment", [Line(_wallet(a), 700), Line("platform:adjustments", -700)])
    db.session.commit()
    counts = _counts(db)
    lines = {
        "amount": [Line(_wallet(a), 701), Line("platform:adjustments", -701)],
        "account": [Line(_wallet(b), 700), Line("platform:adjustments", -700)],
        "kind": [Line(_wallet(a), 700), Line("platform:adjustments", -700)],
    }[change]
    with pytest.raises(IdempotencyConflict) as info:
        ledger.post_journal("test:key", "sale" if change == "kind" else "adjustment", lines)
    assert info.value.code == "idempotency_conflict"
    db.session.rollback()
    assert _counts(db) == counts
    assert (f.wallet(a), f.wallet(b)) == (700, 0)
    journal = db.session.get(Journal, first)
    assert {p.account.code: p.amount for p in journal.postings} == {_wallet(a): 700, "platform:adjustments": -700}


@BOTH
def test_cached_account_cannot_go_negative(app, db, f):
    a = f.agent(balance=1000, with_user=False)
    for kind in ("wallet", "pending", "frozen"):
        before = _counts(db)
        with pytest.raises(InsufficientBalance) as info:
            ledger.post_journal(f"test:overdraw:{kind}", "adjustment",
                                [Line(agent_account_code(a.id, kind), -1001 if kind == "wallet" else -1),
                                 Line("platform:adjustments", 1001 if kind == "wallet" else 1)])
        assert info.value.code == "insufficient_balance"
        assert _counts(db) == before  # refused before anything was written
        db.session.rollback()
    assert ledger.agent_balances(a.id) == {"wallet": 1000, "pending": 0, "frozen": 0}
    # down to exactly zero is fine; uncached platform accounts may go below zero by design
    ledger.post_journal("test:to-zero", "adjustment", [Line(_wallet(a), -1000), Line("platform:adjustments", 1000)])
    db.session.commit()
    assert f.wallet(a) == 0
    assert ledger.balance_of("platform:adjustments") == 0
    ledger.post_journal("test:fees-negative", "adjustment", [Line("platform:fees", -5), Line("platform:revenue", 5)])
    db.session.commit()
    assert ledger.balance_of("platform:fees") == -5


@BOTH
def test_database_refuses_a_negative_cached_balance_even_with_raw_sql(app, db, f):
    a = f.agent(with_user=False)
    with pytest.raises(IntegrityError):
        db.session.execute(text("UPDATE ledger_account SET balance = -1 WHERE code = :c"), {"c": _wallet(a)})
        db.session.flush()
    db.session.rollback()
    assert f.wallet(a) == 0


PG_ONLY = pytest.mark.parametrize("app", ["postgresql"], indirect=True)


@PG_ONLY
def test_concurrent_posts_of_the_same_key_make_one_journal(app, db, f):
    """The second poster waits on the first's uncommitted journal, then gets the same id back: credited once."""
    a = f.agent(with_user=False)
    wallet = _wallet(a)
    db.session.commit()
    lines = [Line(wallet, 500), Line("platform:adjustments", -500)]
    first_posted, release = threading.Event(), threading.Event()
    ids: dict = {}

    def first():
        with app.app_context():
            from app.extensions import db as tdb
            ids["first"] = ledger.post_journal("test:race-key", "adjustment", lines)
            first_posted.set()
            release.wait(30)
            tdb.session.commit()

    def second():
        with app.app_context():
            from app.extensions import db as tdb
            try:
                ids["second"] = ledger.post_journal("test:race-key", "adjustment", lines)
                tdb.session.commit()
            except Exception as exc:  # noqa: BLE001 - asserted below
                ids["second"] = repr(exc)
                tdb.session.rollback()

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_posted.wait(30)
    t2 = threading.Thread(target=second)
    t2.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the second is blocked (wallet row lock) behind the first
        waiting = db.session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()"))
        db.session.rollback()
        if waiting:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the second poster never waited for the first")
    release.set()
    t1.join(30)
    t2.join(30)
    assert ids["second"] == ids["first"]
    assert db.session.scalar(select(func.count()).where(Journal.idempotency_key == "test:race-key")) == 1
    assert f.wallet(a) == 500


@PG_ONLY
def test_concurrent_debits_never_overdraw_a_wallet(app, db, f):
    a = f.agent(balance=100, with_user=False)
    wallet = _wallet(a)
    db.session.commit()
    barrier = threading.Barrier(10)
    outcomes: list[str] = []

    def debit(i: int):
        with app.app_context():
            from app.extensions import db as tdb
            barrier.wait(30)
            try:
                ledger.post_journal(f"test:debit:{i}", "adjustment", [Line(wallet, -40),
                                                                       Line("platform:adjustments", 40)])
                tdb.session.commit()
                outcomes.append("ok")
            except InsufficientBalance:
                tdb.session.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=debit, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["ok"] * 2 + ["refused"] * 8
    db.session.expire_all()
    assert f.wallet(a) == 20


# ---------------------------------------------------------------------------------------------------------------
# flask kameng ledger-check

def _ledger_check(app):
    return app.test_cli_runner().invoke(args=["kameng", "ledger-check"])


def _busy_ledger(db, f):
    """A realistic small ledger: two funded agents, a supplier with a fee, two delivered orders."""
    a = f.agent(balance=50_000, tier_obj=f.tier(discount_bp=9000), with_user=False)
    b = f.agent(balance=20_000, parent=a, with_user=False)
    p = f.product(face_price=10000, cost=8000, supplier_fee_bp=250, secrets=6)
    o1 = orders.place_wallet_order(a.id, p.id, 2)
    o2 = orders.place_wallet_order(b.id, p.id, 1)
    return a, b, p, o1, o2


@BOTH
def test_ledger_check_passes_on_a_healthy_ledger(app, db, f):
    result = _ledger_check(app)
    assert result.exit_code == 0, result.output
    assert "ledger ok" in result.output
    _busy_ledger(db, f)
    result = _ledger_check(app)
    assert result.exit_code == 0, result.output
    assert "ledger ok" in result.output and "FAIL" not in result.output


def _sql(db, statement: str, **params):
    result = db.session.execute(text(statement), params)
    db.session.commit()
    return result


def _corrupt_cached_balance(db, ctx):
    _sql(db, "UPDATE ledger_account SET balance = balance + 1 WHERE code = :c", c=_wallet(ctx["a"]))
    return lambda: _sql(db, "UPDATE ledger_account SET balance = balance - 1 WHERE code = :c", c=_wallet(ctx["a"]))


def _corrupt_unbalanced_posting(db, ctx):
    journal_id = db.session.scalar(select(Journal.id).where(Journal.order_id == ctx["o1"].id))
    account_id = db.session.scalar(select(Account.id).where(Account.code == "platform:revenue"))
    _sql(db, "INSERT INTO ledger_posting (journal_id, account_id, amount, created_at) "
             "VALUES (:j, :a, 1, CURRENT_TIMESTAMP)", j=journal_id, a=account_id)
    return lambda: _sql(db, "DELETE FROM ledger_posting WHERE journal_id = :j AND account_id = :a AND amount = 1",
                        j=journal_id, a=account_id)


def _corrupt_secret_sold_without_order(db, ctx):
    secret_id = db.session.scalar(text("SELECT id FROM card_secret WHERE status = 'available' ORDER BY id"))
    _sql(db, "UPDATE card_secret SET status = 'sold' WHERE id = :id", id=secret_id)
    return lambda: _sql(db, "UPDATE card_secret SET status = 'available' WHERE id = :id", id=secret_id)


def _corrupt_delivered_order_loses_a_secret(db, ctx):
    secret_id = db.session.scalar(text("SELECT id FROM card_secret WHERE order_id = :o ORDER BY id"),
                                  {"o": ctx["o1"].id})
    _sql(db, "UPDATE card_secret SET status = 'available', order_id = NULL WHERE id = :id", id=secret_id)
    return lambda: _sql(db, "UPDATE card_secret SET status = 'sold', order_id = :o WHERE id = :id",
                        id=secret_id, o=ctx["o1"].id)


def _corrupt_delivered_order_without_sale_journal(db, ctx):
    journal_id = db.session.scalar(select(Journal.id).where(Journal.order_id == ctx["o2"].id))
    _sql(db, "UPDATE ledger_journal SET order_id = NULL WHERE id = :j", j=journal_id)
    return lambda: _sql(db, "UPDATE ledger_journal SET order_id = :o WHERE id = :j", j=journal_id, o=ctx["o2"].id)


def _corrupt_unpaid_order_with_sale_journal(db, ctx):
    _sql(db, "UPDATE orders SET status = 'closed' WHERE id = :o", o=ctx["o2"].id)
    return lambda: _sql(db, "UPDATE orders SET status = 'delivered' WHERE id = :o", o=ctx["o2"].id)


def _corrupt_journal_without_postings(db, ctx):
    _sql(db, "INSERT INTO ledger_journal (idempotency_key, kind, content_hash, created_at) "
             "VALUES ('test:empty', 'adjustment', 'x', CURRENT_TIMESTAMP)")
    return lambda: _sql(db, "DELETE FROM ledger_journal WHERE idempotency_key = 'test:empty'")


CORRUPTIONS = [
    (_corrupt_cached_balance, ["cached balance differs from its postings"]),
    (_corrupt_unbalanced_posting, ["postings do not sum to zero", "journal does not balance"]),
    (_corrupt_secret_sold_without_order, ["card secret sold without an order"]),
    (_corrupt_delivered_order_loses_a_secret, ["delivered card order without its card secrets"]),
    (_corrupt_delivered_order_without_sale_journal, ["delivered order without exactly one sale journal"]),
    (_corrupt_unpaid_order_with_sale_journal, ["order has a sale journal but was never paid"]),
    (_corrupt_journal_without_postings, ["journal has fewer than two postings"]),
]


@BOTH
@pytest.mark.parametrize("corrupt, expected", CORRUPTIONS, ids=[c.__name__[9:] for c, _ in CORRUPTIONS])
def test_ledger_check_fails_naming_the_broken_invariant(app, db, f, corrupt, expected):
    # given a healthy ledger
    a, b, p, o1, o2 = _busy_ledger(db, f)
    assert _ledger_check(app).exit_code == 0
    # when one invariant is broken behind the services' back
    repair = corrupt(db, {"a": a, "b": b, "p": p, "o1": o1, "o2": o2})
    try:
        result = _ledger_check(app)
        # then the check exits 1 and names it, without a traceback
        assert result.exit_code == 1, result.output
        assert "ledger ok" not in result.output and "Traceback" not in result.output
        for name in expected:
            assert f"FAIL {name}" in result.output, result.output
    finally:
        db.session.rollback()
        repair()
    result = _ledger_check(app)
    assert result.exit_code == 0, result.output

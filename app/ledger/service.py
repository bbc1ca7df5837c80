"""The only code that moves money: post a balanced journal, idempotently, under row locks.

Accounts with a cached balance (agents' wallet, pending, frozen) are locked in ascending id order and updated
in the same transaction as their postings; shared platform and supplier accounts are never locked per order,
their balance is the sum of their postings.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from flask_babel import gettext
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm.util import identity_key
from sqlalchemy.types import BigInteger, Integer

from app import cache
from app.clock import utcnow
from app.extensions import db
from app.ledger.errors import IdempotencyConflict, InsufficientBalance, LedgerError, UnbalancedJournal
from app.ledger.models import Account, Journal, Posting
from app.rows import run

# Accounts that agents own; created with the agent. Only these keep a cached, non-negative balance.
AGENT_CACHED_KINDS = ("wallet", "pending", "frozen")
BUYER_FUNDS = "platform:buyer_funds"  # money received for an order and not yet earned or refunded
PLATFORM_ACCOUNTS = {
    "platform:revenue": "revenue",
    "platform:fees": "fees",
    "platform:commission_expense": "commission_expense",
    "platform:shop_profit_expense": "shop_profit_expense",  # agent shops' profit (app.agentshops)
    "platform:payouts": "payouts",
    "platform:adjustments": "adjustments",
    BUYER_FUNDS: "buyer_funds",
    "platform:disputes_held": "disputes_held",  # supplier payables frozen while an order's dispute is open
    "platform:clearing:sandbox": "clearing",
    "platform:clearing:alipay": "clearing",
    "platform:clearing:wechatpay": "clearing",
    "platform:clearing:unionpay": "clearing",
    "platform:clearing:epay": "clearing",  # 易支付 (issue 17)
}


@dataclass(frozen=True)
class Line:
    account_code: str
    amount: int  # fen; + credits, - debits


def agent_account_code(agent_id: int, kind: str) -> str:
    return f"agent:{agent_id}:{kind}"


def supplier_account_code(supplier_id: int) -> str:
    return f"supplier:{supplier_id}:payable"


def open_agent_accounts(agent_id: int) -> None:
    for kind in AGENT_CACHED_KINDS:
        db.session.add(Account(code=agent_account_code(agent_id, kind), kind=kind, agent_id=agent_id,
                               cached=True, balance=0))


def open_supplier_account(supplier_id: int) -> None:
    db.session.add(Account(code=supplier_account_code(supplier_id), kind="payable", supplier_id=supplier_id,
                           cached=False, balance=0))


def ensure_platform_accounts() -> None:
    existing = set(db.session.scalars(select(Account.code).where(Account.code.like("platform:%"))))
    for code, kind in PLATFORM_ACCOUNTS.items():
        if code not in existing:
            db.session.add(Account(code=code, kind=kind, cached=False, balance=0))
    db.session.flush()


def _content_hash(kind: str, lines: list[Line]) -> str:
    canonical = json.dumps([kind, sorted((ln.account_code, ln.amount) for ln in lines)], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _merge(lines: list[Line]) -> list[Line]:
    totals: dict[str, int] = {}
    for ln in lines:
        # Integer fen only: int() would silently post 100.7 as 100, and take "100" or True as money.
        if not isinstance(ln.amount, int) or isinstance(ln.amount, bool):
            raise LedgerError(f"amounts are integer fen, got {ln.amount!r} for {ln.account_code}")
        totals[ln.account_code] = totals.get(ln.account_code, 0) + ln.amount
    return [Line(code, amount) for code, amount in totals.items() if amount != 0]


def _insert(table):
    """INSERT with ON CONFLICT support for the dialect in use (PostgreSQL in production, SQLite by default)."""
    return (postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert)(table)


def _existing(key: str, content_hash: str):
    """The journal already posted under `key` as a row (id, content_hash), or None."""
    journal = db.session.connection().execute(
        select(Journal.id, Journal.content_hash).where(Journal.idempotency_key == key)).first()
    if journal is not None and journal.content_hash != content_hash:
        raise IdempotencyConflict(f"journal {key} was already posted with different content")
    return journal


# Every purchase locks its accounts: the statements are built once (the id list is expanded per call; a purchase's
# one account, the buyer's wallet, has a statement of its own that app.rows.run sends as it is).
_LOCK_ACCOUNTS = (select(Account.__table__.c.id, Account.__table__.c.balance)
                  .where(Account.__table__.c.id.in_(bindparam("ids", expanding=True)))
                  .order_by(Account.__table__.c.id).with_for_update())
_LOCK_ACCOUNT = (select(Account.__table__.c.id, Account.__table__.c.balance)
                 .where(Account.__table__.c.id == bindparam("id", type_=Integer)).with_for_update())


def lock_accounts(codes: list[str]) -> dict[str, tuple[int, bool, int]]:
    """Look up accounts by code; lock the cached ones in ascending id order. Returns code -> (id, cached, balance)."""
    db.session.flush()  # accounts added in this session but not yet flushed must be found (Core skips autoflush)
    conn = db.session.connection()
    # code -> (id, cached): fixed once an account exists, so kept in memory (app.cache)
    found = dict(cache.fetch("accounts", tuple(codes), lambda: tuple(
        (row.code, (row.id, row.cached)) for row in conn.execute(
            select(Account.id, Account.code, Account.cached).where(Account.code.in_(codes))))))
    missing = set(codes) - set(found)
    if missing:
        raise UnbalancedJournal(f"unknown ledger accounts: {', '.join(sorted(missing))}")
    cached_ids = sorted(acc_id for acc_id, cached in found.values() if cached)
    balances: dict[int, int] = {}
    if cached_ids:
        locked = (run(_LOCK_ACCOUNT, {"id": cached_ids[0]}, conn) if len(cached_ids) == 1
                  else conn.execute(_LOCK_ACCOUNTS, {"ids": cached_ids})).all()
        balances = {row.id: row.balance for row in locked}
    return {code: (acc_id, cached, balances.get(acc_id, 0)) for code, (acc_id, cached) in found.items()}


def post_journal(key: str, kind: str, lines: list[Line], memo: str | None = None, order_id: int | None = None,
                 actor_id: int | None = None, locked: dict | None = None) -> int:
    """Post a balanced journal once per idempotency key. Does not commit: the caller's transaction owns it.

    Returns the journal id. Posting the same key with the same content again returns the first journal's id;
    with different content it raises IdempotencyConflict. A cached account that would go negative raises
    InsufficientBalance and nothing is written.
    """
    lines = _merge(lines)
    if len(lines) < 2 or sum(ln.amount for ln in lines) != 0:
        raise UnbalancedJournal(f"journal {key} does not balance: {lines}")
    content_hash = _content_hash(kind, lines)
    db.session.flush()  # what the caller added (its order, accounts) is visible to the Core statements below
    accounts = locked if locked is not None else lock_accounts([ln.account_code for ln in lines])
    for ln in lines:
        acc_id, cached, balance = accounts[ln.account_code]
        if cached and balance + ln.amount < 0:
            previous = _existing(key, content_hash)  # posted before, when the balance was there: the same answer
            if previous is not None:
                return previous.id
            raise InsufficientBalance(gettext("余额不足"))

    # The key is unique. ON CONFLICT DO NOTHING inserts nothing when it was posted before, or concurrently by a
    # transaction that committed first (PostgreSQL waits for it): then the same content returns that journal
    # and different content is an IdempotencyConflict. No savepoint, no read before the insert.
    conn = db.session.connection()
    if conn.dialect.name == "postgresql":
        journal_id = _post_in_one_statement(conn, key, kind, content_hash, memo, order_id, actor_id, lines, accounts)
        if journal_id is None:
            previous = _existing(key, content_hash)
            if previous is None:
                raise IdempotencyConflict(f"journal {key}: the key is taken but its journal cannot be read")
            return previous.id
        _expire_loaded_balances([accounts[ln.account_code][0] for ln in lines if accounts[ln.account_code][1]])
        return journal_id
    journal_id = conn.execute(
        _insert(Journal).values(idempotency_key=key, kind=kind, content_hash=content_hash, memo=memo,
                                order_id=order_id, actor_id=actor_id, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(Journal.id)
    ).scalar()
    if journal_id is None:
        previous = _existing(key, content_hash)
        if previous is None:
            raise IdempotencyConflict(f"journal {key}: the key is taken but its journal cannot be read")
        return previous.id

    now = utcnow()
    conn.execute(insert(Posting.__table__), [
        {"journal_id": journal_id, "account_id": accounts[ln.account_code][0], "amount": ln.amount,
         "created_at": now} for ln in lines
    ])
    _apply_to_cached_balances(conn, [(accounts[ln.account_code][0], ln.amount) for ln in lines
                                     if accounts[ln.account_code][1]])
    return journal_id


# PostgreSQL: the journal, its postings and the cached balances in one round trip. The postings and the balance
# update read the journal CTE, so when the key was already taken (ON CONFLICT DO NOTHING returns no row) nothing
# else is written either and the statement returns no row.
_POST_JOURNAL = text(
    "WITH j AS (INSERT INTO ledger_journal (idempotency_key, kind, content_hash, memo, order_id, actor_id, created_at)"
    " VALUES (:key, :kind, :content_hash, :memo, :order_id, :actor_id, :now)"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id),"
    " p AS (INSERT INTO ledger_posting (journal_id, account_id, amount, created_at)"
    " SELECT j.id, t.account_id, t.amount, :now FROM j, unnest(:account_ids, :amounts) AS t(account_id, amount)),"
    " b AS (UPDATE ledger_account a SET balance = a.balance + d.delta"
    " FROM j, unnest(:cached_ids, :cached_deltas) AS d(id, delta) WHERE a.id = d.id)"
    " SELECT id FROM j").bindparams(
    bindparam("account_ids", type_=ARRAY(Integer)), bindparam("amounts", type_=ARRAY(BigInteger)),
    bindparam("cached_ids", type_=ARRAY(Integer)), bindparam("cached_deltas", type_=ARRAY(BigInteger)))


def _post_in_one_statement(conn, key, kind, content_hash, memo, order_id, actor_id, lines, accounts) -> int | None:
    cached = [(accounts[ln.account_code][0], ln.amount) for ln in lines if accounts[ln.account_code][1]]
    return run(_POST_JOURNAL, {
        "key": key, "kind": kind, "content_hash": content_hash, "memo": memo, "order_id": order_id,
        "actor_id": actor_id, "now": utcnow(),
        "account_ids": [accounts[ln.account_code][0] for ln in lines], "amounts": [ln.amount for ln in lines],
        "cached_ids": [c[0] for c in cached], "cached_deltas": [c[1] for c in cached]}, conn).scalar()


def _expire_loaded_balances(account_ids: list[int]) -> None:
    for acc_id in account_ids:
        loaded = db.session.identity_map.get(identity_key(Account, acc_id))
        if loaded is not None:
            db.session.expire(loaded, ["balance"])  # an Account object already loaded rereads its balance


def _apply_to_cached_balances(conn, changes: list[tuple[int, int]]) -> None:
    """Add each posting to its account's cached balance: one statement for a whole batch on PostgreSQL (a
    settlement journal touches thousands of accounts), one per account elsewhere. The check constraint keeps
    cached balances non-negative either way."""
    table = Account.__table__
    if len(changes) > 1 and conn.dialect.name == "postgresql":
        conn.execute(text(
            "UPDATE ledger_account a SET balance = a.balance + d.delta "
            "FROM unnest(:ids, :deltas) AS d(id, delta) WHERE a.id = d.id").bindparams(
            bindparam("ids", type_=ARRAY(Integer)), bindparam("deltas", type_=ARRAY(BigInteger))),
            {"ids": [c[0] for c in changes], "deltas": [c[1] for c in changes]})
    else:
        for acc_id, amount in changes:
            conn.execute(update(table).where(table.c.id == acc_id).values(balance=table.c.balance + amount))
    _expire_loaded_balances([acc_id for acc_id, _ in changes])


def balance_of(code: str) -> int:
    """Balance of an account: the cache where kept, else the sum of its postings."""
    account = db.session.scalar(select(Account).where(Account.code == code))
    if account is None:
        return 0
    if account.cached:
        return account.balance
    return db.session.scalar(select(func.coalesce(func.sum(Posting.amount), 0))
                             .where(Posting.account_id == account.id))


def agent_balances(agent_id: int) -> dict[str, int]:
    rows = db.session.execute(select(Account.kind, Account.balance).where(Account.agent_id == agent_id,
                                                                          Account.cached.is_(True))).all()
    result = {kind: 0 for kind in AGENT_CACHED_KINDS}
    result.update({row.kind: row.balance for row in rows})
    return result

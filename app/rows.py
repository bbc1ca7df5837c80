"""Writing one new row of a hot path without the unit of work: `insert_loaded(obj)` sends one INSERT ... RETURNING
built once per shape and puts the object in the session as a loaded row (the ORM's flush of a single object costs
several times the statement). Objects written so are forgotten by a rollback, as the ORM's own inserts are.
`commit_keeping(obj)` commits without expiring what the caller just wrote (no read back on its next use)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from app.extensions import db

T = TypeVar("T")
_STATEMENTS: dict[tuple, object] = {}
_INSERTED = "kameng_rows_inserted"


def insert_loaded(obj: T, on_conflict: Sequence[str] | None = None) -> T | None:
    """Write `obj` (built by its constructor, not in the session yet) and attach it as loaded: its id and column
    defaults come back with RETURNING; every other column it did not set is NULL. Returns `obj`.

    `on_conflict`: the columns of a unique constraint; a row already holding those values (committed, or committed
    concurrently: PostgreSQL waits for it) is left alone, nothing is written, and the answer is None.
    """
    table = type(obj).__table__
    values = {column.key: obj.__dict__[column.key] for column in table.c if column.key in obj.__dict__}
    dialect = db.engine.dialect.name  # ON CONFLICT is each dialect's own construct
    shape = (dialect, table.name, tuple(values), tuple(on_conflict or ()))
    statement = _STATEMENTS.get(shape)
    if statement is None:
        statement = _STATEMENTS[shape] = _statement(dialect, table, values, on_conflict)
    db.session.flush()  # what the caller added before (a row this one refers to) goes first
    row = db.session.connection().execute(statement, values).first()
    if row is None:
        return None
    for column in table.c:
        if column.key not in values:
            setattr(obj, column.key, row._mapping.get(column.key))
    make_transient_to_detached(obj)  # as if loaded: no history, nothing to flush
    db.session.add(obj)
    _remember(db.session(), obj)
    return obj


def dialect_insert(table, dialect: str | None = None):
    """INSERT for this database's dialect (PostgreSQL or SQLite), the one with ON CONFLICT."""
    dialect = dialect or db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _statement(dialect: str, table, values: dict, on_conflict: Sequence[str] | None):
    statement = dialect_insert(table, dialect)
    if on_conflict:
        statement = statement.on_conflict_do_nothing(index_elements=list(on_conflict))
    defaulted = [c for c in table.c if c.key not in values
                 and (c.default is not None or c.server_default is not None or c.primary_key)]
    return statement.returning(*defaulted)


def commit_keeping(*objs: object) -> None:
    """Commit, and keep what `objs` hold loaded instead of expiring it: the caller wrote them in this transaction,
    so the committed row holds those values (the ORM would read each one back on its next use)."""
    kept = [(obj, {k: v for k, v in obj.__dict__.items() if not k.startswith("_")}) for obj in objs]
    db.session.commit()
    for obj, values in kept:
        for name, value in values.items():
            set_committed_value(obj, name, value)


def _remember(session: Session, obj: object) -> None:
    """Note the (sub)transaction `obj` was written in; what earlier, finished transactions wrote is dropped."""
    here = session.get_nested_transaction() or session.get_transaction()
    root = _root(here)
    written = [(tx, o) for tx, o in session.info.get(_INSERTED, ()) if _root(tx) is root]
    written.append((here, obj))
    session.info[_INSERTED] = written


def _root(transaction):
    while transaction is not None and transaction.parent is not None:
        transaction = transaction.parent
    return transaction


def _within(transaction, outer) -> bool:
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    """The ORM forgets the rows a rollback undid only for objects it inserted itself: do the same for these,
    those written inside the transaction (or savepoint) rolling back (SQLite may hand the same id to the next row).
    Like the ORM's own, they become transient with the values they hold (added again, they are inserted again):
    this runs after the database's rollback and before the session expires what it still holds."""
    written = session.info.get(_INSERTED)
    if not written:
        return
    rolling_back = session.get_nested_transaction() or session.get_transaction()
    kept = []
    for tx, obj in written:
        if _within(tx, rolling_back):
            if obj in session:
                session.expunge(obj)
            make_transient(obj)
        else:
            kept.append((tx, obj))
    session.info[_INSERTED] = kept

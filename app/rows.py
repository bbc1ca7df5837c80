"""Writing one new row of a hot path without the unit of work: `insert_loaded(obj)` sends one INSERT ... RETURNING
built once per shape and puts the object in the session as a loaded row (the ORM's flush of a single object costs
several times the statement). Objects written so are forgotten by a rollback, as the ORM's own inserts are.
`commit_keeping(obj)` commits without expiring what the caller just wrote (no read back on its next use).
`run(statement, params)` executes one of a hot path's long-lived statements through the driver (see there);
`entity_columns(Model)` and `attach_loaded(Model, row)` read a whole entity that way and attach it as the ORM's query
would."""
from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import bindparam, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, set_committed_value

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
    for column in table.c:  # Python-side defaults (created_at=utcnow ...) computed here, as the ORM would at flush
        default = column.default
        if column.key not in values and default is not None and not column.primary_key:
            if default.is_scalar:
                values[column.key] = default.arg
            elif default.is_callable:
                values[column.key] = default.arg(None)  # our defaults take no context (SQLAlchemy wraps them)
    dialect = db.engine.dialect.name  # ON CONFLICT is each dialect's own construct
    shape = (dialect, table.name, tuple(values), tuple(on_conflict or ()))
    statement = _STATEMENTS.get(shape)
    if statement is None:
        statement = _STATEMENTS[shape] = _statement(dialect, table, values, on_conflict)
    db.session.flush()  # what the caller added before (a row this one refers to) goes first
    row = run(statement, values).first()
    if row is None:
        return None
    returned = row._asdict()
    for column in table.c:
        if column.key not in values:
            setattr(obj, column.key, returned.get(column.key))
        elif column.key not in obj.__dict__:
            setattr(obj, column.key, values[column.key])
    make_transient_to_detached(obj)  # as if loaded: no history, nothing to flush
    db.session.add(obj)
    _remember(db.session(), obj)
    return obj


def dialect_insert(table, dialect: str | None = None):
    """INSERT for this database's dialect (PostgreSQL or SQLite), the one with ON CONFLICT."""
    dialect = dialect or db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _statement(dialect: str, table, values: dict, on_conflict: Sequence[str] | None):
    # The columns named as parameters: the statement compiles the same whatever the values (app.rows.run)
    statement = dialect_insert(table, dialect).values({key: bindparam(key, type_=table.c[key].type) for key in values})
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


def entity_columns(model) -> list:
    """Every column of `model`'s table, in the order attach_loaded() reads them: put them first in a statement whose
    rows attach_loaded() turns into entities. (The table's, not the mapper's: a module builds its statements at
    import, before every mapper can be configured.)"""
    return list(model.__table__.columns)


_ATTRIBUTE_KEYS: dict[type, list[str]] = {}


def attach_loaded(model: type[T], row: Sequence) -> T:
    """The entity of `row` (a run() row whose first values are entity_columns(model)), in the session as a loaded
    row, as the ORM's query would put it there: the one the session already holds for that key when there is one
    (the ORM keeps that one too and does not overwrite what it holds; attributes it expired are read again on their
    next use, where the ORM would fill them from this row). Built without its constructor, so no
    attribute event fires (the row is what the database holds, blind indexes included)."""
    mapper = sa_inspect(model)
    keys = _ATTRIBUTE_KEYS.get(model)
    if keys is None:
        keys = _ATTRIBUTE_KEYS[model] = [mapper.get_property_by_column(c).key for c in entity_columns(model)]
    values = dict(zip(keys, row, strict=False))
    session = db.session()
    identity = mapper.identity_key_from_primary_key([values[mapper.get_property_by_column(c).key]
                                                     for c in mapper.primary_key])
    held = session.identity_map.get(identity)
    if held is not None:
        return held
    obj = mapper.class_manager.new_instance()
    instance_dict(obj).update(values)
    make_transient_to_detached(obj)  # its key from the values, every one of them committed: nothing to flush
    session.add(obj)
    return obj


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


# --- running a hot path's statements through the driver ----------------------------------------------------------

def run(statement, params: dict[str, Any], connection=None):
    """Execute a long-lived Core or text() statement (built once, kept in a module or a shape cache: never one built
    per call) in the session's transaction, or on `connection`. Answers as SQLAlchemy's result does: `.first()`,
    `.one()`, `.all()`, `.scalar()`, `.scalar_one()`, `.rowcount`, rows with their columns as attributes.

    On PostgreSQL the statement is compiled once and its SQL sent through the driver's cursor: SQLAlchemy's cache key,
    execution context and result object cost about 0.15 ms of CPU per statement here, as much again as the
    driver's own work, on ten statements a purchase. Errors come back as SQLAlchemy's exceptions (a lost connection
    invalidates it, as any statement's would). On the session's connection the session autoflushes first, as
    before an ORM query; result columns whose type processes values (an encrypted column) are
    processed as SQLAlchemy's result would. A statement whose compiled form needs SQLAlchemy at execution
    (Python-side column defaults, expanding IN lists), any other database, or an engine with execution listeners
    (they see every statement) runs the ordinary way."""
    if connection is None:
        session = db.session()
        session._autoflush()  # what an ORM query would flush first (not under no_autoflush, not while flushing)
        conn = session.connection()
    else:
        conn = connection
    plan = _plan(statement, conn)
    if plan is None:
        return conn.execute(statement, params)
    return plan.run(conn, params)


@dataclass
class _Plan:
    sql: str
    fixed: dict[str, Any]  # the statement's own bound values (literals compiled as parameters)
    processors: dict[str, Any]  # the dialect's bind processors (arrays), by parameter name
    results: tuple | None = None  # per result column, its type's result processor or None (None: no column has one)
    row_class: Any = field(default=None)  # a named tuple of the result's columns, made on the first answer

    def run(self, conn, params: dict[str, Any]):
        values = {**self.fixed, **params}
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(self.sql, values)
            result = cursor.pgresult
            if result is None or not result.nfields:  # no rows (cursor.description would build its columns)
                return _Answer([], cursor.rowcount)
            if self.row_class is None:
                self.row_class = namedtuple("Row", [c.name for c in cursor.description], rename=True)
            make = self.row_class._make
            if self.results is None:
                return _Answer([make(r) for r in cursor.fetchall()], cursor.rowcount)
            steps = self.results  # decrypting an encrypted column, as SQLAlchemy's result would
            return _Answer([make([v if f is None or v is None else f(v) for f, v in zip(steps, r, strict=True)])
                            for r in cursor.fetchall()], cursor.rowcount)
        except Exception as exc:  # noqa: BLE001 - wrapped (and the connection invalidated if lost) as SQLAlchemy does
            conn._handle_dbapi_exception(exc, self.sql, values, cursor, None)
        finally:
            cursor.close()


_PLANS: dict[int, tuple[object, _Plan | None]] = {}


def _plan(statement, conn) -> _Plan | None:
    if conn.dialect.name != "postgresql" or conn._has_events or conn.engine._has_events:
        return None
    found = _PLANS.get(id(statement))
    if found is not None and found[0] is statement:
        return found[1]
    plan = _compile(statement, conn.dialect)
    _PLANS[id(statement)] = (statement, plan)  # the statement is kept with its plan: its id is never reused
    return plan


def _compile(statement, dialect) -> _Plan | None:
    compiled = statement.compile(dialect=dialect)
    if (getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None)
            or "POSTCOMPILE" in compiled.string or any(
                bind.callable is not None or bind.expanding for bind in compiled.bind_names)):
        return None
    results = tuple(column[3]._cached_result_processor(dialect, None) for column in compiled._result_columns)
    names = compiled.escaped_bind_names
    fixed = {names.get(name, name): bind.value for bind, name in compiled.bind_names.items() if not bind.required}
    if any(names.get(n, n) != n for n in compiled.bind_names.values()):
        return None  # parameter names the driver sees differ from the caller's: keep SQLAlchemy's mapping
    return _Plan(compiled.string, fixed, dict(compiled._bind_processors),
                 results if any(f is not None for f in results) else None)


class _Answer:
    """The rows and row count of one statement, read the way callers read SQLAlchemy's results."""
    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list, rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    def all(self) -> list:
        return self.rows

    def first(self):
        return self.rows[0] if self.rows else None

    def one(self):
        if len(self.rows) != 1:
            from sqlalchemy.exc import MultipleResultsFound, NoResultFound

            raise (NoResultFound if not self.rows else MultipleResultsFound)(f"{len(self.rows)} rows, expected one")
        return self.rows[0]

    def scalar(self):
        return self.rows[0][0] if self.rows else None

    def scalar_one(self):
        return self.one()[0]

    def __iter__(self):
        return iter(self.rows)

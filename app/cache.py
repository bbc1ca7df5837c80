"""Read-mostly facts kept in each process's memory: products, suppliers' fees, tiers and their prices, price rules,
agents, API keys, risk lists and rules, payment channels' settings. The purchase and payment paths read them on
every order; they change a few times a day.

Invalidation is exact, not timed. On PostgreSQL a deferred trigger on every source table moves the one row of
`cache_version` to a new number from a sequence when the transaction that changed rows commits (once per
transaction; migration c15b00000001 lists the tables). A unit of work (a request, a job) reads that number once,
before its first cached read (the Open API reads it in the statement that records the request's nonce: no extra
round trip). The process keeps its entries only while the number it last saw is the database's: any other number
empties them first. A change committed before the read is therefore always seen; one committing during a request
is seen by the next, as it would be with a plain SELECT at the start of the request.

Within a unit, after a flush or an ORM/Core INSERT, UPDATE or DELETE of a cached table through the session, every
cached read goes to the database until the unit commits or rolls back (it must see its own uncommitted change, and
nothing read in that state is kept); a raw SQL text write is not recognised until then.

Entries are small frozen values, never ORM objects (they outlive sessions and are shared between threads). On
SQLite (the embedded default) nothing is cached: every read goes to the database.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

from flask import current_app, g, has_app_context
from sqlalchemy import BigInteger, Column, Integer, event, text
from sqlalchemy.orm import Session

from app.extensions import db
from app.rows import run

T = TypeVar("T")
MAX_ENTRIES = 50_000  # far above a catalogue's products × tiers; past it, start over rather than grow
MISSING = object()
_VERSION_SQL = text("SELECT version FROM cache_version WHERE id = 1")


class CacheVersion(db.Model):
    """The one row whose `version` every change to a cached table moves (by trigger)."""
    __tablename__ = "cache_version"
    id = Column(Integer, primary_key=True)
    version = Column(BigInteger, nullable=False)


class _Store:
    def __init__(self, tables: frozenset[str]) -> None:
        self.lock = threading.Lock()
        self.version: int | None = None
        self.entries: dict[tuple[str, Hashable], object] = {}
        self.tables = tables  # the tables whose changes move the version (those with the trigger)

    def observe(self, version: int | None) -> None:
        with self.lock:
            if version != self.version:
                self.entries.clear()
                self.version = version


def _store() -> _Store | None:
    """This app's store, or None where nothing is cached (not PostgreSQL)."""
    stores = current_app.extensions
    store = stores.get("kameng_cache", MISSING)
    if store is MISSING:
        tables = _triggered_tables() if db.engine.dialect.name == "postgresql" else frozenset()
        store = _Store(tables) if tables else None  # no triggers (not migrated yet): nothing could invalidate
        stores["kameng_cache"] = store
    return store


def _triggered_tables() -> frozenset[str]:
    with db.engine.connect() as conn:
        return frozenset(conn.execute(text(
            "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE t.tgname LIKE 'kameng_cache_%'")).scalars())


def observe(version: int | None) -> None:
    """The database's version, just read by the caller in a statement of its own (the Open API's nonce insert):
    this unit of work reads under it."""
    store = _store()
    if store is None:
        return
    store.observe(version)
    g.kameng_cache_version = version


def _unit_version(store: _Store) -> int | None:
    version = g.get("kameng_cache_version", MISSING)
    if version is MISSING:
        version = run(_VERSION_SQL, {}).scalar()  # through the driver (app.rows.run): every request's first read
        store.observe(version)
        g.kameng_cache_version = version
    return version


def forget_unit() -> None:
    g.pop("kameng_cache_version", None)
    g.pop("kameng_cache_bypass", None)


def fetch(namespace: str, key: Hashable, load: Callable[[], T]) -> T:
    """The cached value of (namespace, key), loaded by `load()` (a fresh read from the database) on a miss.
    `load` must return an immutable value (tuple, frozen dataclass, frozenset...), or None."""
    store = _store()
    if store is None:
        return load()
    # What the loader's query would autoflush (a cached table flushed: bypass, below). A clean session's flush
    # returns at once: cheaper than asking for its new, dirty and deleted sets, each built as a set per call.
    db.session().flush()
    if g.get("kameng_cache_bypass"):
        return load()
    version = _unit_version(store)
    if version is None:  # no version row (a wiped table): nothing can be trusted
        return load()
    entry_key = (namespace, key)
    with store.lock:
        current = store.version == version
        value = store.entries.get(entry_key, MISSING) if current else MISSING
    if value is not MISSING:
        return value
    value = load()
    with store.lock:
        # Kept only while the process still holds the version this unit read under (loaded after it was read,
        # so no older than it).
        if store.version == version:
            if len(store.entries) >= MAX_ENTRIES:
                store.entries.clear()
            store.entries[entry_key] = value
    return value


def changed_without_triggers() -> None:
    """A bulk load that skips triggers (session_replication_role = replica) moves the version itself, with its own
    commit."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("INSERT INTO cache_version (id, version) VALUES (1, nextval('cache_version_seq')) "
                                "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version"))


def peek(namespace: str, key: Hashable) -> tuple[object, int | None]:
    """(value, version): what this process holds for (namespace, key) at the version it saw last, without asking
    the database (MISSING when it holds nothing). The caller must then learn the database's version in a statement
    it runs anyway (observe()) and redo its work with fetch() when unit_version() differs from the one returned."""
    store = _store()
    if store is None:
        return MISSING, None
    with store.lock:
        return store.entries.get((namespace, key), MISSING), store.version


def unit_version() -> object:
    """The version this unit of work reads under (MISSING before it has read one)."""
    return g.get("kameng_cache_version", MISSING)


def _end_of_unit(*_args) -> None:
    """The unit of work's version is forgotten: its next cached read reads it again."""
    if has_app_context():
        forget_unit()


def _after_flush(session, _context) -> None:
    if not has_app_context():
        return
    store = _store()
    if store is not None and any(getattr(obj, "__tablename__", None) in store.tables
                                 for obj in (*session.new, *session.dirty, *session.deleted)):
        g.kameng_cache_bypass = True


# Execution options of a write to a cached table that changes nothing a cached fact must show exactly (its
# triggers skip it too: a purchase lowering agent.topup_unspent, migration c21p00000001).
UNAFFECTED = {"kameng_cache_unaffected": True}


def _after_orm_statement(state) -> None:
    if not (state.is_insert or state.is_update or state.is_delete) or not has_app_context():
        return
    if state.execution_options.get("kameng_cache_unaffected"):
        return
    store = _store()
    table = getattr(state.statement, "table", None)
    if store is not None and getattr(table, "name", None) in store.tables:
        g.kameng_cache_bypass = True


# Every session (the request's, a job's), listened once on the base class: a commit or a rollback ends a unit of
# work; a flush or an INSERT/UPDATE/DELETE through the session that wrote a cached table sends the unit's cached
# reads to the database until then.
event.listen(Session, "after_commit", _end_of_unit)
event.listen(Session, "after_soft_rollback", _end_of_unit)
event.listen(Session, "after_flush", _after_flush)
event.listen(Session, "do_orm_execute", _after_orm_statement)

"""One state machine per entity: its allowed moves in one table (a Machine, declared next to its model), and one
guarded move: `UPDATE ... SET status = :new WHERE id = :id AND status = :current`, with a row-count check.

Two jobs (or a job and a person) that meet on one row cannot both move it: the second one's UPDATE finds the status
changed and matches nothing. Nothing else assigns `status` (tests/test_architecture.py scans the code for it); each
entity's service wraps move() in its own function, which also writes what follows the move (audit, outbox, ledger)
in the same transaction. docs/states.md is drawn from these tables (tools/states.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flask_babel import gettext
from sqlalchemy import CTE, ColumnElement, Executable, bindparam, func, select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from app.errors import Conflict
from app.extensions import db
from app.rows import run


class IllegalMove(Conflict):
    """The table has no such move from the current status."""
    code = "illegal_move"


class LostMove(IllegalMove):
    """Another transaction moved the row first: it is no longer in the status the caller read."""
    code = "lost_move"


@dataclass(frozen=True)
class Machine:
    """An entity's lifecycle: `moves` maps each status to the statuses it may move to; `initial` the statuses a
    row is created in (its constructor sets them)."""
    name: str
    model: type
    moves: dict[str, set[str]]
    initial: tuple[str, ...]
    title: str = ""  # what the diagram calls it (docs/states.md)
    illegal: type[Conflict] = IllegalMove
    lost: type[Conflict] = LostMove
    notes: dict[str, str] = field(default_factory=dict)  # "from->to": why, shown on the diagram

    def __post_init__(self) -> None:
        unknown = {target for targets in self.moves.values() for target in targets} - set(self.moves)
        unknown |= set(self.initial) - set(self.moves)
        if unknown:
            raise ValueError(f"{self.name}: statuses {sorted(unknown)} are moved to but have no row in the table")
        MACHINES[self.name] = self

    @property
    def statuses(self) -> list[str]:
        return list(self.moves)

    def allows(self, current: str, new: str) -> bool:
        return new in self.moves.get(current, ())

    def final(self) -> list[str]:
        return [status for status, targets in self.moves.items() if not targets]


MACHINES: dict[str, Machine] = {}


@dataclass(frozen=True)
class IfUnset:
    """A value move() writes only where the column is still NULL (`coalesce(column, value)`): a first time kept."""
    value: object


@dataclass(frozen=True)
class Follow:
    """What follows a move, written by the statement that moves the row (PostgreSQL; see move()).

    `build(moved)` returns the data-modifying CTEs over `moved`, with `bindparam()`s for every value: it runs once
    per `key` (the CTEs' shape), and `params` gives the bound values of each call.
    """
    key: tuple
    build: Callable[[CTE], list[CTE]]
    params: dict


def follow_all(*follows: Follow) -> Follow:
    """Several follows as one (their CTEs side by side, their values together)."""
    builds = [f.build for f in follows]
    return Follow(tuple(f.key for f in follows), lambda moved: [cte for build in builds for cte in build(moved)],
                  {name: value for f in follows for name, value in f.params.items()})


# Statements built once per shape (machine, statuses, the names written and returned, what follows), with the
# values bound at execution: building and hashing a statement costs more CPU than sending it.
_SHAPES: dict[tuple, Executable] = {}


def _set_clause(table, values: dict[str, object]) -> dict[str, object]:
    """The SET clause of a cached shape: `:set_<name>` for each value (IfUnset: coalesce(column, :set_<name>))."""
    return {name: func.coalesce(table.c[name], bindparam(f"set_{name}", type_=table.c[name].type))
            if isinstance(value, IfUnset) else bindparam(f"set_{name}", type_=table.c[name].type)
            for name, value in values.items()}


def _bound(values: dict[str, object]) -> dict[str, object]:
    return {f"set_{name}": value.value if isinstance(value, IfUnset) else value for name, value in values.items()}


def _cacheable(values: dict[str, object]) -> bool:
    """Plain values and IfUnset are bound; any other SQL expression is built into the statement each time."""
    return not any(isinstance(value, ColumnElement) for value in values.values())


def _illegal(machine: Machine, current: str, new: str, row: object) -> str:
    return gettext("状态不能从 %(current)s 变为 %(new)s (%(entity)s %(row)s)", current=current, new=new,
                   entity=machine.name, row=row if row is not None else "")


def _lost(machine: Machine, current: str, row: object) -> str:
    return gettext("状态已被其他操作改变，请刷新后重试 (%(entity)s %(row)s is no longer %(current)s)",
                   entity=machine.name, row=row, current=current)


def move(machine: Machine, row_id: int, current: str, new: str, *, returning: Iterable[str] = (),
         follow: Follow | None = None, **values: object):
    """Move one row from `current` to `new` (and write `values` with it), guarded on `current`. Does not commit.

    Raises machine.illegal when the table has no such move, machine.lost when the row is no longer in `current`.
    A loaded ORM object of the row is updated in place (no reload). Returns the RETURNING row, if asked for.
    `values`: plain values, `IfUnset(value)`, or SQL expressions (which make the statement be built anew).
    `follow` (PostgreSQL): given the move as a CTE returning `returning`, the data-modifying CTEs (INSERT ... SELECT
    from it) that record what follows the move; the statement that moves the row writes them (one round trip),
    and only if it moved the row.
    """
    if not machine.allows(current, new):
        raise machine.illegal(_illegal(machine, current, new, row_id))
    db.session.flush()  # the caller's pending changes first, as the ORM would (a Core statement does not autoflush)
    names = tuple(returning)
    if follow is not None and not names:
        raise ValueError("follow needs the move to return something")
    params = {"move_id": row_id}
    cached = _cacheable(values)
    if cached:
        key = ("move", machine.name, current, new, tuple((n, isinstance(v, IfUnset)) for n, v in values.items()),
               names, follow.key if follow is not None else None)
        statement = _SHAPES.get(key)
        if statement is None:
            statement = _SHAPES[key] = _move_statement(machine, current, new, _set_clause(
                machine.model.__table__, values), names, follow)
        params.update(_bound(values))
    else:
        statement = _move_statement(machine, current, new, {
            name: func.coalesce(machine.model.__table__.c[name], value.value) if isinstance(value, IfUnset)
            else value for name, value in values.items()}, names, follow)
    if follow is not None:
        params.update(follow.params)
    result = run(statement, params) if cached else db.session.connection().execute(statement, params)
    row = result.first() if names else None
    if (row is None) if names else result.rowcount != 1:
        raise machine.lost(_lost(machine, current, row_id))
    loaded = db.session.identity_map.get(identity_key(machine.model, row_id))
    if loaded is not None:  # an object already loaded holds what was written
        for name, value in {"status": new, **values}.items():
            if isinstance(value, ColumnElement | IfUnset):  # computed by the database: read on next access
                db.session.expire(loaded, [name])
            else:
                set_committed_value(loaded, name, value)
    return row


def _move_statement(machine: Machine, current: str, new: str, set_clause: dict[str, object], names: tuple[str, ...],
                    follow: Follow | None) -> Executable:
    table = machine.model.__table__
    statement = (update(table).where(table.c.id == bindparam("move_id"), table.c.status == current)
                 .values(status=new, **set_clause))
    if names:
        statement = statement.returning(*(table.c[name] for name in names))
    if follow is not None:
        moved = statement.cte("moved")
        statement = select(moved).add_cte(*follow.build(moved))
    return statement


def move_all(machine: Machine, current: str, new: str, *where: ColumnElement[bool], returning: Iterable[str] = (),
             expect: int | None = None, shape: str | None = None, params: dict | None = None, **values: object):
    """Move every row in `current` matching `where` to `new` in one statement (a batch claim: settlement, a
    reversal of an order's commissions). With `expect`, anything but that many rows raises machine.lost. Returns the
    RETURNING rows if asked for, else the count. Loaded objects of the model reread what it wrote when next used.

    `shape`: a name for `where` when it holds no values of its own, only `bindparam()`s given by `params` (a hot
    path's claim): the statement is then built once per shape and reused.
    """
    if not machine.allows(current, new):
        raise machine.illegal(_illegal(machine, current, new, None))
    db.session.flush()
    table = machine.model.__table__
    names = tuple(returning)
    bound = dict(params or {})
    cached = shape is not None and _cacheable(values)
    if cached:
        key = ("move_all", machine.name, current, new, shape,
               tuple((n, isinstance(v, IfUnset)) for n, v in values.items()), names)
        statement = _SHAPES.get(key)
        if statement is None:
            statement = _SHAPES[key] = _move_all_statement(table, current, new, where, _set_clause(table, values),
                                                           names)
        bound.update(_bound(values))
    else:
        statement = _move_all_statement(table, current, new, where, {
            name: func.coalesce(table.c[name], value.value) if isinstance(value, IfUnset) else value
            for name, value in values.items()}, names)
    result = run(statement, bound) if cached else db.session.connection().execute(statement, bound)
    rows = result.all() if names else None
    count = len(rows) if names else result.rowcount
    if expect is not None and count != expect:
        raise machine.lost(_lost(machine, current, f"{count}/{expect}"))
    if count:
        written = ["status", *values]
        for loaded in [o for o in db.session.identity_map.values() if isinstance(o, machine.model)]:
            db.session.expire(loaded, written)
    return rows if names else count


def _move_all_statement(table, current: str, new: str, where, set_clause: dict[str, object],
                        names: tuple[str, ...]) -> Executable:
    statement = update(table).where(table.c.status == current, *where).values(status=new, **set_clause)
    if names:
        statement = statement.returning(*(table.c[name] for name in names))
    return statement

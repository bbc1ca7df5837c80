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
from sqlalchemy import CTE, ColumnElement, select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from app.errors import Conflict
from app.extensions import db


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


def _illegal(machine: Machine, current: str, new: str, row: object) -> str:
    return gettext("状态不能从 %(current)s 变为 %(new)s (%(entity)s %(row)s)", current=current, new=new,
                   entity=machine.name, row=row if row is not None else "")


def _lost(machine: Machine, current: str, row: object) -> str:
    return gettext("状态已被其他操作改变，请刷新后重试 (%(entity)s %(row)s is no longer %(current)s)",
                   entity=machine.name, row=row, current=current)


def move(machine: Machine, row_id: int, current: str, new: str, *, returning: Iterable[str] = (),
         follow: Callable[[CTE], list[CTE]] | None = None, **values: object):
    """Move one row from `current` to `new` (and write `values` with it), guarded on `current`. Does not commit.

    Raises machine.illegal when the table has no such move, machine.lost when the row is no longer in `current`.
    A loaded ORM object of the row is updated in place (no reload). Returns the RETURNING row, if asked for.
    `follow` (PostgreSQL): given the move as a CTE returning `returning`, the data-modifying CTEs (INSERT ... SELECT
    from it) that record what follows the move; the statement that moves the row writes them (one round trip),
    and only if it moved the row.
    """
    if not machine.allows(current, new):
        raise machine.illegal(_illegal(machine, current, new, row_id))
    db.session.flush()  # the caller's pending changes first, as the ORM would (a Core statement does not autoflush)
    table = machine.model.__table__
    statement = (update(table).where(table.c.id == row_id, table.c.status == current)
                 .values(status=new, **values))
    names = tuple(returning)
    if names:
        statement = statement.returning(*(table.c[name] for name in names))
    if follow is not None:
        if not names:
            raise ValueError("follow needs the move to return something")
        moved = statement.cte("moved")
        statement = select(moved).add_cte(*follow(moved))
    result = db.session.connection().execute(statement)
    row = result.first() if names else None
    if (row is None) if names else result.rowcount != 1:
        raise machine.lost(_lost(machine, current, row_id))
    loaded = db.session.identity_map.get(identity_key(machine.model, row_id))
    if loaded is not None:  # an object already loaded holds what was written
        for name, value in {"status": new, **values}.items():
            if isinstance(value, ColumnElement):  # computed by the database: read on next access
                db.session.expire(loaded, [name])
            else:
                set_committed_value(loaded, name, value)
    return row


def move_all(machine: Machine, current: str, new: str, *where: ColumnElement[bool], returning: Iterable[str] = (),
             expect: int | None = None, **values: object):
    """Move every row in `current` matching `where` to `new` in one statement (a batch claim: settlement, a
    reversal of an order's commissions). With `expect`, anything but that many rows raises machine.lost. Returns the
    RETURNING rows if asked for, else the count. Loaded objects of the model reread what it wrote when next used."""
    if not machine.allows(current, new):
        raise machine.illegal(_illegal(machine, current, new, None))
    db.session.flush()
    table = machine.model.__table__
    statement = update(table).where(table.c.status == current, *where).values(status=new, **values)
    names = tuple(returning)
    if names:
        statement = statement.returning(*(table.c[name] for name in names))
    result = db.session.connection().execute(statement)
    rows = result.all() if names else None
    count = len(rows) if names else result.rowcount
    if expect is not None and count != expect:
        raise machine.lost(_lost(machine, current, f"{count}/{expect}"))
    if count:
        written = ["status", *values]
        for loaded in [o for o in db.session.identity_map.values() if isinstance(o, machine.model)]:
            db.session.expire(loaded, written)
    return rows if names else count

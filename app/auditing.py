"""ModelView mixins: roll back what a failed form left in the session, and write one audit entry per add, edit and
delete, in the same transaction."""
from __future__ import annotations

from flask import g, request
from flask_babel import gettext
from sqlalchemy import inspect
from sqlalchemy.exc import DataError, IntegrityError

from app.audit import service as audit
from app.extensions import db


def flush_or_refuse() -> None:
    """Flush inside pre_add/pre_update; a constraint failure becomes a readable form message, not SQL text."""
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise ValueError(gettext("保存失败：与已有记录冲突（名称或绑定重复）")) from None
    except DataError:
        db.session.rollback()
        raise ValueError(gettext("保存失败：数值超出允许范围")) from None


def refuse_if_referenced(item) -> None:
    """Try the delete in a savepoint: a row other rows still point to (orders, ledger accounts, prices) is refused
    with a readable message instead of FAB's empty 'database error' flash."""
    try:
        with db.session.begin_nested():
            db.session.delete(item)
            db.session.flush()
    except IntegrityError:
        raise ValueError(gettext("仍有其他记录引用它，不能删除（可以改为停用）")) from None


class TransactionalViewMixin:
    """FAB catches an exception from populate_obj / pre_add / pre_update / pre_delete, flashes it and returns, but
    never rolls back: the half-built or half-edited row (or a failed flush) stays in the session, and the next
    commit in that session would write it. Every POST to add/edit/delete ends with a rollback of whatever it did
    not commit (after a successful save there is nothing left to roll back)."""

    def _discard_uncommitted(self) -> None:
        if request.method == "POST":
            db.session.rollback()

    def _add(self):
        try:
            return super()._add()
        finally:
            self._discard_uncommitted()

    def _edit(self, pk):
        try:
            return super()._edit(pk)
        finally:
            self._discard_uncommitted()

    def _delete(self, pk):
        try:
            return super()._delete(pk)
        finally:
            self._discard_uncommitted()


def _blank_as_none(value):
    return None if value == "" else value  # an empty text box saves "" over NULL: not a change worth auditing


def _ident(obj):
    return None if obj is None else getattr(obj, "id", None)


class AuditedViewMixin(TransactionalViewMixin):
    """Writes `<target>.create/.update/.delete` with the audited columns' old and new values.

    The old values are read when the edit request loads the row, before the form touches it: a view's own
    pre_update often queries first (a duplicate check, a subtree move), and the autoflush that query triggers
    would wipe the attribute history the diff would otherwise rely on.
    """
    audit_target = "record"  # e.g. "tier", "product"
    audit_columns: list[str] = []

    def _audit_value(self, item, col: str):
        """A column's current value; an `x_id` column through its relationship `x`, which is what forms set
        (the foreign key itself only follows at the flush)."""
        rel = col[:-3] if col.endswith("_id") else None
        if rel and rel in inspect(item).mapper.relationships:
            state = inspect(item).attrs[rel]
            if state.history.added:
                return _ident(state.history.added[0])
        return getattr(item, col)

    def _audit_snapshot(self, item) -> dict:
        return {c: self._audit_value(item, c) for c in self.audit_columns}

    def _edit(self, pk):
        if request.method == "POST" and self.audit_columns:
            with db.session.no_autoflush:
                item = self.datamodel.get(self._deserialize_pk_if_composite(pk), self._base_filters)
            if item is not None:
                g.kameng_audit_before = (type(self).__name__, item.id, self._audit_snapshot(item))
        try:
            return super()._edit(pk)
        finally:
            g.pop("kameng_audit_before", None)

    def _changes(self, item) -> tuple[dict, dict]:
        before = g.get("kameng_audit_before")
        if before is None or before[:2] != (type(self).__name__, item.id):
            return {}, {}
        old, new = {}, {}
        after = self._audit_snapshot(item)
        for col in self.audit_columns:
            if _blank_as_none(before[2][col]) != _blank_as_none(after[col]):
                old[col], new[col] = before[2][col], after[col]
        return old, new

    def pre_update(self, item):
        super().pre_update(item)
        old, new = self._changes(item)
        if new or old:
            audit.record(f"{self.audit_target}.update", self.audit_target, getattr(item, "id", None), old, new)

    def pre_add(self, item):
        super().pre_add(item)
        db.session.add(item)
        flush_or_refuse()  # an id for the entry; FAB's add commits item and entry together
        audit.record(f"{self.audit_target}.create", self.audit_target, item.id, None,
                     {c: getattr(item, c) for c in self.audit_columns})

    def pre_delete(self, item):
        super().pre_delete(item)
        refuse_if_referenced(item)
        audit.record(f"{self.audit_target}.delete", self.audit_target, item.id,
                     {c: getattr(item, c) for c in self.audit_columns}, None)

"""A ModelView mixin that writes one audit entry per add, edit and delete, in the same transaction."""
from __future__ import annotations

from sqlalchemy import inspect

from app.audit import service as audit


class AuditedViewMixin:
    audit_target = "record"  # e.g. "tier", "product"
    audit_columns: list[str] = []

    def _changes(self, item) -> tuple[dict, dict]:
        state = inspect(item)
        old, new = {}, {}
        for col in self.audit_columns:
            hist = state.attrs[col].history
            if hist.has_changes():
                old[col] = hist.deleted[0] if hist.deleted else None
                new[col] = hist.added[0] if hist.added else None
        return old, new

    def pre_update(self, item):
        super().pre_update(item)
        old, new = self._changes(item)
        if new:
            audit.record(f"{self.audit_target}.update", self.audit_target, getattr(item, "id", None), old, new)

    def pre_add(self, item):
        super().pre_add(item)
        from app.extensions import db
        db.session.add(item)
        db.session.flush()  # an id for the entry; FAB's add commits item and entry together
        audit.record(f"{self.audit_target}.create", self.audit_target, item.id, None,
                     {c: getattr(item, c) for c in self.audit_columns})

    def pre_delete(self, item):
        super().pre_delete(item)
        audit.record(f"{self.audit_target}.delete", self.audit_target, item.id,
                     {c: getattr(item, c) for c in self.audit_columns}, None)

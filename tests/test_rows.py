"""app/rows.py: a row written by insert_loaded is in the session as if loaded, and a rollback forgets exactly the
rows it undid, savepoints included, as the ORM does for its own inserts."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from app.catalog.models import Category
from app.extensions import db
from app.rows import commit_keeping, insert_loaded


def _category() -> Category:
    return insert_loaded(Category(name=f"rows-{uuid.uuid4().hex[:12]}"))


def _stored(*names: str) -> int:
    return db.session.scalar(select(func.count()).select_from(Category).where(Category.name.in_(names)))


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_a_savepoint_rolled_back_forgets_only_its_own_rows(app):
    outer = _category()
    assert outer.id and outer in db.session and not db.session.new  # loaded, nothing left to flush
    savepoint = db.session.begin_nested()
    inner = _category()
    savepoint.rollback()
    assert inner not in db.session and outer in db.session
    names = (outer.name, inner.name)
    commit_keeping(outer)
    assert "name" in outer.__dict__  # kept loaded across the commit
    assert _stored(*names) == 1 and db.session.get(Category, outer.id) is outer


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_a_rollback_forgets_rows_of_savepoints_released_inside_it(app):
    first = _category()
    with db.session.begin_nested():  # released: its row now belongs to the outer transaction
        second = _category()
    names = (first.name, second.name)
    db.session.rollback()
    assert first not in db.session and second not in db.session
    assert _stored(*names) == 0
    again = _category()  # SQLite may give the same id again: no clash with a forgotten object
    db.session.commit()
    assert again in db.session and _stored(again.name) == 1


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_a_rolled_back_row_added_again_is_inserted_again(app):
    """As the ORM does with its own inserts: the object a rollback undid is transient, so adding it again writes it."""
    category = _category()
    db.session.rollback()
    db.session.add(category)
    db.session.commit()
    assert category.id and _stored(category.name) == 1 and db.session.get(Category, category.id) is category

"""app/rows.py: a row written by insert_loaded is in the session as if loaded, and a rollback forgets exactly the
rows it undid, savepoints included, as the ORM does for its own inserts; run() answers as SQLAlchemy does."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import bindparam, create_engine, event, func, select, update
from sqlalchemy.exc import IntegrityError, NoResultFound

from app.catalog.models import Category
from app.extensions import db
from app.orders.models import Order
from app.rows import _plan, attach_loaded, commit_keeping, dialect_insert, entity_columns, insert_loaded, run
from tests import payments_helpers as ph


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


# --- run(): a hot path's statement through the driver ------------------------------------------------------------

_BY_NAME = select(Category.__table__.c.id, Category.__table__.c.name).where(
    Category.__table__.c.name == bindparam("name"))
_RENAME = update(Category.__table__).where(Category.__table__.c.name.like(bindparam("prefix") + "%")).values(
    name=Category.__table__.c.name + "!")
_IN_LIST = select(Category.__table__.c.id).where(Category.__table__.c.id.in_(bindparam("ids", expanding=True)))


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_run_answers_as_sqlalchemy_does(app):
    first, second = _category(), _category()
    assert (first.sort_order, first.active) == (0, True)  # Python-side defaults, computed by insert_loaded
    row = run(_BY_NAME, {"name": first.name}).first()
    assert (row.id, row.name) == (first.id, first.name) and run(_BY_NAME, {"name": first.name}).all() == [row]
    assert run(_BY_NAME, {"name": first.name}).scalar_one() == first.id
    assert run(_BY_NAME, {"name": "nobody"}).first() is None and run(_BY_NAME, {"name": "nobody"}).scalar() is None
    with pytest.raises(NoResultFound):
        run(_BY_NAME, {"name": "nobody"}).one()
    prefix = first.name[:5]  # "rows-": both rows, and any left by other tests
    assert run(_RENAME, {"prefix": prefix}).rowcount >= 2
    assert sorted(r.id for r in run(_IN_LIST, {"ids": [first.id, second.id]})) == sorted([first.id, second.id])
    db.session.rollback()


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_run_sends_a_built_statement_through_the_driver_on_postgresql(app):
    """The fast path is the one taken (a plan is compiled); what needs SQLAlchemy at execution is not sent so.
    An engine of its own: SQLAlchemy keeps an engine marked as listened to once any test listened to it."""
    engine = create_engine(db.engine.url)
    try:
        with engine.connect() as conn:
            assert _plan(_BY_NAME, conn) is not None and _plan(_RENAME, conn) is not None
            assert _plan(_IN_LIST, conn) is None  # an expanding IN list is rendered per call
            assert run(_BY_NAME, {"name": "nobody"}, conn).first() is None
    finally:
        engine.dispose()


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_run_raises_sqlalchemy_errors_and_the_session_goes_on(app):
    category = _category()
    db.session.commit()
    clash = dialect_insert(Category.__table__).values(name=bindparam("name"))
    with pytest.raises(IntegrityError):
        run(clash, {"name": category.name})
    db.session.rollback()
    assert run(_BY_NAME, {"name": category.name}).scalar_one() == category.id


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_run_statements_are_seen_by_execution_listeners(app):
    """A listener on the engine sees them: run() goes SQLAlchemy's way."""
    seen = []

    def record(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        run(_BY_NAME, {"name": "nobody"})
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert any("FROM category" in s for s in seen)
    db.session.rollback()


# --- attach_loaded(): a whole entity read through run() -----------------------------------------------------------

_ORDER_BY_NO = select(*entity_columns(Order)).where(Order.__table__.c.order_no == bindparam("order_no"))


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_an_entity_read_through_run_is_the_one_the_orm_would_load(app, f):
    """Every attribute as the ORM loads it (the encrypted contact decrypted, as SQLAlchemy's result does), nothing
    to flush, the entity the session already holds when it holds one, and expired by a commit like any other."""
    ph.setup_sandbox()
    order = ph.guest_order(f.product(), "sandbox", contact="138 0013 8000")
    db.session.commit()
    order_no = order.order_no
    db.session.expunge_all()
    by_orm = db.session.scalar(select(Order).where(Order.order_no == order_no))
    expected = {c.key: getattr(by_orm, c.key) for c in Order.__table__.columns}
    assert attach_loaded(Order, run(_ORDER_BY_NO, {"order_no": order_no}).first()) is by_orm  # the session's own
    db.session.expunge_all()
    attached = attach_loaded(Order, run(_ORDER_BY_NO, {"order_no": order_no}).first())
    assert {c.key: getattr(attached, c.key) for c in Order.__table__.columns} == expected
    assert attached.contact == "138 0013 8000" and attached.contact_hash == expected["contact_hash"]
    assert attached in db.session and not db.session.new and not db.session.dirty
    assert db.session.get(Order, attached.id) is attached
    db.session.commit()
    assert "status" not in attached.__dict__  # expired by the commit: its next use reads the row again
    assert attached.status == expected["status"] and attached.product.id == expected["product_id"]  # relationships load

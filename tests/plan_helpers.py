"""Query plans of statements as the app sends them (PostgreSQL): capture a statement while an entry point runs, then
run it again under EXPLAIN ANALYZE in the same transaction and roll back."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from app.extensions import db


@contextmanager
def statements_sent(marker: str) -> Iterator[list[tuple[str, object]]]:
    """Collects (statement, parameters) of every statement containing `marker` that reaches the driver meanwhile.
    A listener on the engine makes app.rows.run take SQLAlchemy's way; the SQL sent is the same."""
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if marker in statement:
            sent.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)


def plan_nodes(statement: str, parameters) -> list[dict]:
    """Every node of the statement's plan as it runs now (EXPLAIN ANALYZE, JSON), on the session's connection; what
    the statement changed is rolled back with the session's transaction."""
    with db.session.connection().connection.driver_connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        plan = cursor.fetchone()[0][0]["Plan"]
    db.session.rollback()
    nodes, stack = [], [plan]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", ()))
    return nodes

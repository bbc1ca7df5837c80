"""Property tests of the state machines (app/states.py) on PostgreSQL: threads race random moves on one row.

Given a row of an entity in its initial status, when several threads each try a random sequence of moves at once
(each reads the status, then moves from it), then the moves that succeeded form one chain along the entity's table
(initial → ... → the status the row ends in), never a move the table forbids, and each success wrote its side
effect (an audit entry, in the move's transaction) exactly once: no move was applied twice.
"""
from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app import states
from app.audit import service as audit
from app.audit.models import AuditEntry
from app.clock import utcnow
from app.extensions import db
from tests.factories import unique

THREADS = 3


def _outbox(f):
    from app.outbox.models import OutboxMessage

    return OutboxMessage(topic="test", key=unique("prop"), payload="{}", status="pending")


def _settlement_run(f):
    from app.network.models import SettlementRun

    return SettlementRun(trigger="manual", cutoff=utcnow(), status="running")


def _alert(f):
    from app.alerts.models import Alert

    key = unique("prop")
    return Alert(key=key, open_key=key, rule="test", severity="warning", status="open", summary="test", facts="{}")


def _card_import(f):
    from app.catalog.models import CardImport

    return CardImport(product_id=f.product().id, source="paste", status="queued", total_lines=1)


def _topup(f):
    from app.payments.models import WalletTopUp

    return WalletTopUp(topup_no=unique("T")[:32], agent_id=f.agent(with_user=False).id, amount=100, channel="sandbox",
                       status="pending_payment")


def _withdrawal(f):
    from app.network.models import Withdrawal

    return Withdrawal(withdrawal_no=unique("W")[:32], agent_id=f.agent(with_user=False).id, amount=100, fee=0,
                      net_amount=100, bank_card_masked="6222****0000", status="pending_review")


def _payment(f):
    from app.payments.models import Payment

    return Payment(channel="sandbox", trade_no=unique("P"), amount=100, status="paid")


def _refund(f):
    from app.payments.models import Refund

    return Refund(amount=100, destination="sandbox", reason="test", status="requested", out_refund_no=unique("R")[:32],
                  next_attempt_at=utcnow(), updated_at=utcnow())


def _channel_order(f):
    from app.payments.models import ChannelOrder

    return ChannelOrder(channel="sandbox", out_trade_no=unique("C")[:40], amount=100, status="open",
                        pay_url="about:blank", expires_at=utcnow() + timedelta(minutes=30))


BUILDERS = {"outbox_message": _outbox, "settlement_run": _settlement_run, "alert": _alert,
            "card_import": _card_import, "wallet_topup": _topup, "withdrawal": _withdrawal, "payment": _payment,
            "refund": _refund, "channel_order": _channel_order}


def _machine(name: str) -> states.Machine:
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tools"))
    import states as drawing  # every module that declares a Machine, imported

    return {m.name: m for m in drawing.machines()}[name]


@pytest.mark.parametrize("entity", sorted(BUILDERS))
def test_concurrent_random_moves_follow_the_table_once_each(app, f, entity):
    machine = _machine(entity)
    statuses = machine.statuses

    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.lists(st.sampled_from(statuses), min_size=1, max_size=6), min_size=THREADS,
                    max_size=THREADS))
    def run(plans: list[list[str]]) -> None:
        row = BUILDERS[entity](f)
        initial = row.status
        db.session.add(row)
        db.session.commit()
        row_id = row.id
        tag = f"prop.{entity}"
        successes = []
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        def worker(plan: list[str]) -> None:
            with app.app_context():
                start.wait()
                for target in plan:
                    current = db.session.scalar(select(machine.model.status).where(machine.model.id == row_id))
                    try:
                        states.move(machine, row_id, current, target)
                        # what follows the move, in its transaction: counted below
                        audit.record(tag, entity, row_id, {"status": current}, {"status": target})
                        db.session.commit()
                    except states.IllegalMove:  # LostMove included: another thread moved it first
                        db.session.rollback()
                        continue
                    with lock:
                        successes.append((current, target))
                db.session.remove()

        threads = [threading.Thread(target=worker, args=(plan,)) for plan in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        db.session.rollback()
        entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == tag,
                                                              AuditEntry.target_id == str(row_id))
                                     .order_by(AuditEntry.id)).all()
        chain = [(json.loads(e.old_value)["status"], json.loads(e.new_value)["status"]) for e in entries]
        # each success wrote its side effect once, and nothing else did
        assert sorted(chain) == sorted(successes)
        # one chain along the table, from the initial status to where the row is
        status = initial
        for old, new in chain:
            assert old == status, chain
            assert machine.allows(old, new), (old, new)
            status = new
        final = db.session.scalar(select(machine.model.status).where(machine.model.id == row_id))
        assert final == status

    run()

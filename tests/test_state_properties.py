"""Property tests of the state machines (app/states.py) on PostgreSQL: threads race random moves on one row.

Given a row of an entity in an initial status, when several threads each try a random sequence of moves at once
(each through the entity's own move function where it has one: orders.transition, topups.move, withdrawals.move,
recharge.move, refunds.transition, outbox.finish, ...), then the moves that were applied form one chain along the
entity's table (initial → ... → the status the row ends in), never a move the table forbids; each applied move wrote
its marker (an audit entry in the move's transaction) exactly once, and what the entity's function writes with a
move (the order's rollup row, chain record and callback; a refund's journal, alert and resubmission; a shop's
audit) was written exactly once per applied move: no move was applied twice.

Every Machine that tools/states.py draws has a case here (test_every_machine_has_a_property_test).
"""
from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache, partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, inspect, select

from app import states
from app.agentshops import service as shops
from app.agentshops.models import AgentShop, AgentShopDomain
from app.alerts import service as alerts
from app.alerts.models import ALERT_STATES, Alert, AlertChannel, AlertDelivery
from app.analytics.models import RollupPending
from app.analytics.service import pending_sign
from app.audit import service as audit
from app.audit.models import AuditEntry
from app.catalog import cards
from app.catalog.models import CARD_SECRET_STATES, CardImport, CardSecret
from app.chain.models import ChainRecord
from app.chain.service import DELIVERY
from app.clock import utcnow
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.models import Journal
from app.network import settlement, withdrawals
from app.network.models import Commission, RealNameVerification, SettlementRun, Withdrawal
from app.notices import service as notices
from app.notices.models import DeliveryNotice
from app.orders import service as orders
from app.orders.models import Order
from app.outbox import service as outbox
from app.outbox.models import OutboxMessage
from app.payments import disputes, refunds, topups
from app.payments.models import ChannelOrder, Dispute, Payment, PaymentAlert, Refund, WalletTopUp
from app.risk.models import RiskModel
from app.suppliers import recharge
from app.suppliers.models import RechargeAttempt
from tests.factories import unique

THREADS = 3
MARK = "prop.move"  # the marker's audit action

Mover = Callable[[int, str, Callable[[str | None], None]], None]


@dataclass(frozen=True)
class Case:
    """How to make a row (`build(f, initial)`, added and committed by the test) and how a thread moves it:
    `move(row_id, target, mark)` performs one move and calls `mark(old)` in its transaction (before the function
    commits, if it commits itself; old None when only the function knows it); a refusal raises or returns without
    marking. `record(row)`: the entity's own record of its moves [(old, new)], checked against the markers;
    `effects(row, chain)`: what follows each applied move, checked against the chain."""
    build: Callable
    move: Mover | None = None  # None: the generic states.move
    initials: tuple[str, ...] = ()  # build once per initial status (default: the builder's)
    record: Callable | None = None
    effects: Callable | None = None
    plans: tuple[tuple[str, ...], ...] = ()  # plans every thread runs at once, besides the drawn ones


@cache
def _drawing() -> list[states.Machine]:
    tools = str(Path(__file__).resolve().parent.parent / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import states as drawing  # every module that declares a Machine, imported

    return drawing.machines()


def _machine(name: str) -> states.Machine:
    return {m.name: m for m in _drawing()}[name]


def _generic(name: str) -> Mover:
    """The generic guarded move: the entity's services move it inside larger functions only."""
    def move(row_id: int, target: str, mark) -> None:
        machine = _machine(name)
        _by_id(machine.model, partial(states.move, machine))(row_id, target, mark)
    return move


def _by_id(model, function: Callable[[int, str, str], None]) -> Mover:
    """Through the entity's move function `function(row_id, current, new)`."""
    def move(row_id: int, target: str, mark) -> None:
        current = db.session.scalar(select(model.status).where(model.id == row_id))
        function(row_id, current, target)
        mark(current)
    return move


def _by_object(model, function: Callable[..., None]) -> Mover:
    """Through the entity's move function `function(row, new)`, guarded on the status the loaded row holds."""
    def move(row_id: int, target: str, mark) -> None:
        row = _loaded(model, row_id)
        old = row.status
        function(row, target)
        mark(old)
    return move


def _claim_all(name: str) -> Mover:
    """The batch claim (states.move_all) that the entity's service uses, on this one row, expecting one."""
    def move(row_id: int, target: str, mark) -> None:
        machine = _machine(name)
        table = machine.model.__table__
        current = db.session.scalar(select(table.c.status).where(table.c.id == row_id))
        states.move_all(machine, current, target, table.c.id == row_id, expect=1)
        mark(current)
    return move


def _loaded(model, row_id: int):
    return db.session.get(model, row_id, populate_existing=True)


# --- orders: through orders.transition, with its rollup row, chain record and callback ---------------------------

def _order_row(f, status: str, notify_url: str | None = "http://127.0.0.1:9/notify", agent: bool = True,
               product=None):
    product = product or f.product(kind="direct")  # a card order's secrets: the ledger check at teardown
    agent_id = f.agent(with_user=False).id if agent else None
    return Order(order_no=unique("O")[:32], agent_id=agent_id, product_id=product.id, supplier_id=product.supplier_id,
                 quantity=1, face_price=1000, unit_price=1000, amount=1000, cost_total=900, status=status,
                 channel="wallet", notify_url=notify_url, paid_at=utcnow() if status != "pending_payment" else None)


def _saved_order(f, status: str, **kw) -> Order:
    order = _order_row(f, status, notify_url=None, **kw)
    db.session.add(order)
    db.session.flush()
    return order


def _order(f, initial: str):
    return _order_row(f, initial)


def _order_effects(order, chain) -> None:
    # one pending rollup row per move that counts, with its sign (folds are the periodic job's here: REDIS_URL set)
    signs = [pending_sign(old, new) for old, new in chain]
    noted = db.session.scalars(select(RollupPending.sign).where(RollupPending.order_id == order.id)).all()
    assert Counter(noted) == Counter(s for s in signs if s is not None), (chain, noted)
    # a chain record on the first delivery, never a second one
    delivered = db.session.scalar(select(func.count()).select_from(ChainRecord).where(
        ChainRecord.kind == DELIVERY, ChainRecord.source_key == order.order_no))
    assert delivered == (1 in signs), chain
    assert signs.count(1) <= 1, chain
    # one callback per notified status the order reached (a status reached again is the same event: one key)
    callbacks = db.session.scalars(select(OutboxMessage.key).where(
        OutboxMessage.topic == "order_callback", OutboxMessage.key.like(f"order:{order.order_no}:notify:%"))).all()
    assert sorted(callbacks) == sorted({f"order:{order.order_no}:notify:{new}" for _old, new in chain
                                        if new in orders.NOTIFIED_STATUSES}), chain
    if order.status == "delivered":
        # transition moves the status only; its callers (deliver_paid, place_wallet_order) book the sale, which
        # the ledger check at teardown expects of a delivered order
        ledger.post_journal(f"order:{order.order_no}:sale", "sale", [
            ledger.Line("platform:adjustments", -order.amount), ledger.Line("platform:revenue", order.amount)],
            order_id=order.id)
        db.session.commit()


# --- payments ----------------------------------------------------------------------------------------------------

def _topup(f, initial: str):
    return WalletTopUp(topup_no=unique("T")[:32], agent_id=f.agent(with_user=False).id, amount=100, channel="sandbox",
                       status="pending_payment")


def _payment(f, initial: str):
    return Payment(channel="sandbox", trade_no=unique("P"), amount=100, status="paid")


def _refund(f, initial: str):
    payment = Payment(channel="sandbox", trade_no=unique("P"), amount=100, status="refunding")
    db.session.add(payment)
    db.session.flush()
    return Refund(payment_id=payment.id, amount=100, destination="sandbox", reason="test", status="requested",
                  out_refund_no=unique("R")[:32], next_attempt_at=utcnow(), updated_at=utcnow())


def _refund_move(row_id: int, target: str, mark) -> None:
    refund = _loaded(Refund, row_id)  # not locked: the guarded move is what stops a second run
    old = refund.status
    if refunds.transition(refund, target, message="prop"):
        mark(old)


def _refund_effects(refund, chain) -> None:
    targets = Counter(new for _old, new in chain)
    payment = db.session.get(Payment, refund.payment_id)
    journals = db.session.scalar(select(func.count()).select_from(Journal).where(
        Journal.idempotency_key == f"refund:{payment.channel}:{payment.trade_no}"))
    assert journals == targets["succeeded"] <= 1, chain  # the money goes back once
    assert payment.status == ("refunded" if targets["succeeded"] else "refunding")
    alerts = db.session.scalar(select(func.count()).select_from(PaymentAlert).where(
        PaymentAlert.refund_id == refund.id))
    assert alerts == targets["failed"], chain
    submits = db.session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.topic == refunds.TOPIC, OutboxMessage.payload == json.dumps({"refund_id": refund.id})))
    assert submits == targets["requested"], chain  # each retry asks the channel once, under a new refund number


def _channel_order(f, initial: str):
    return ChannelOrder(channel="sandbox", out_trade_no=unique("C")[:40], amount=100, status="open",
                        pay_url="about:blank", expires_at=utcnow() + timedelta(minutes=30))


def _dispute(f, initial: str):
    order = _saved_order(f, "disputed")
    return Dispute(order_id=order.id, reason="test", status="open")


# --- network -----------------------------------------------------------------------------------------------------

def _withdrawal(f, initial: str):
    return Withdrawal(withdrawal_no=unique("W")[:32], agent_id=f.agent(with_user=False).id, amount=100, fee=0,
                      net_amount=100, bank_card_masked="6222****0000", status="pending_review")


def _settlement_run(f, initial: str):
    return SettlementRun(trigger="manual", cutoff=utcnow(), status="running")


def _commission(f, initial: str):
    order = _saved_order(f, "paid")
    return Commission(order_id=order.id, agent_id=order.agent_id, level=1, rate_bp=100, base_amount=1000,
                      amount=10, status="pending", settle_after=utcnow())


def _realname(f, initial: str):
    return RealNameVerification(agent_id=f.agent(with_user=False).id, name_enc="x", id_number_enc="x",
                                bank_card_enc="x", phone_enc="x", id_number_hash=unique("h"), name_masked="*",
                                id_number_masked="*", bank_card_masked="*", phone_masked="*", status=initial)


# --- catalog -----------------------------------------------------------------------------------------------------

def _card_import(f, initial: str):
    return CardImport(product_id=f.product().id, source="paste", status="queued", total_lines=1)


def _card_secret(f, initial: str):
    product = f.product(secrets=1)  # imported the way stock is
    _saved_order(f, "paid", product=product)  # what a sale names
    return db.session.scalar(select(CardSecret).where(CardSecret.product_id == product.id))


def _card_secret_move(row_id: int, target: str, mark) -> None:
    """Sold to an order of the secret's product, given back without one (the ledger check: a sold secret has its
    order, an available one none), through the batch move cards.allocate / void_order_secrets use."""
    table = CardSecret.__table__
    current, product_id = db.session.execute(select(table.c.status, table.c.product_id)
                                             .where(table.c.id == row_id)).one()
    values = {}
    if target == "sold":
        values["order_id"] = db.session.scalar(select(Order.id).where(Order.product_id == product_id))
    elif target == "available":
        values["order_id"] = None
    states.move_all(CARD_SECRET_STATES, current, target, table.c.id == row_id, expect=1, **values)
    mark(current)


# --- suppliers, alerts, notices, outbox ----------------------------------------------------------------------------

def _attempt(f, initial: str):
    order = _saved_order(f, "paid")
    return RechargeAttempt(order_id=order.id, supplier_id=order.supplier_id, seq=1, upstream_code="X", cost=900,
                           status="submitting")


def _alert(f, initial: str):
    key = unique("prop")
    return Alert(key=key, open_key=key, rule="test", severity="warning", status="open", summary="test", facts="{}")


def _alert_move(row_id: int, target: str, mark) -> None:
    """Resolving goes through alerts.resolve (by the alert's key); the table has no other move to try."""
    if target != "resolved":
        current = db.session.scalar(select(Alert.status).where(Alert.id == row_id))
        states.move(ALERT_STATES, row_id, current, target)  # refused: the table has no such move
        return
    if alerts.resolve(db.session.scalar(select(Alert.key).where(Alert.id == row_id))) is not None:
        mark("open")


def _alert_delivery(f, initial: str):
    alert = _alert(f, initial)
    channel = AlertChannel(name=unique("ch"), kind="email")
    db.session.add_all([alert, channel])
    db.session.flush()
    return AlertDelivery(alert_id=alert.id, channel_id=channel.id, event="raised", status="queued")


def _notice(f, initial: str):
    # a storefront order (a delivered one without its sale journal would fail the ledger check at teardown)
    order = _saved_order(f, "failed", agent=False)
    return DeliveryNotice(order_id=order.id, kind="email", recipient="buyer@example.com", recipient_masked="b***",
                          status="waiting")


def _outbox(f, initial: str):
    return OutboxMessage(topic="test", key=unique("prop"), payload="{}", status="pending")


def _outbox_move(row_id: int, target: str, mark) -> None:
    """outbox.finish commits, and leaves a lost race standing (rolled back, no error): marked before it."""
    message = _loaded(OutboxMessage, row_id)
    mark(message.status)
    outbox.finish(message, target)


# --- agent shops: through set_status / decide_domain / request_domain, each audited ----------------------------------

def _shop_row(f):
    shop = AgentShop(agent_id=f.agent(with_user=False).id, code=unique("s")[:16], name="shop", status="active")
    db.session.add(shop)
    db.session.flush()
    return shop


def _shop(f, initial: str):
    return _shop_row(f)


def _shop_move(row_id: int, target: str, mark) -> None:
    mark(None)  # set_status commits: the marker goes with its move, or with its rollback
    shops.set_status(row_id, target, None)


def _shop_record(shop) -> list[tuple[str, str]]:
    return _audited(("shop.suspend", "shop.resume"), shop.id)


def _audited(actions: tuple[str, ...], shop_id: int) -> list[tuple[str | None, str]]:
    entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action.in_(actions),
                                                          AuditEntry.target_type == "agent_shop",
                                                          AuditEntry.target_id == str(shop_id))
                                 .order_by(AuditEntry.id)).all()
    return [((json.loads(e.old_value) or {}).get("status"), json.loads(e.new_value)["status"]) for e in entries]


def _domain_name() -> str:
    return f"{unique('d').replace('_', '-').lower()}.example.com"


def _domain(f, initial: str):
    shop = _shop_row(f)
    return AgentShopDomain(shop_id=shop.id, domain=_domain_name(), status="requested")


def _domain_move(row_id: int, target: str, mark) -> None:
    mark(None)  # each function commits: the marker goes with its move
    if target == "requested":  # the agent asks for another domain
        shop_id, agent_id = db.session.execute(select(AgentShop.id, AgentShop.agent_id).join(
            AgentShopDomain, AgentShopDomain.shop_id == AgentShop.id).where(AgentShopDomain.id == row_id)).one()
        shops.request_domain(shop_id, agent_id, _domain_name())
    else:
        shops.decide_domain(row_id, target == "approved", None)


def _domain_record(row) -> list[tuple[str, str]]:
    return _audited(("shop.domain.request", "shop.domain.approve", "shop.domain.reject"), row.shop_id)


def _risk_model(f, initial: str):
    version = (db.session.scalar(select(func.max(RiskModel.version))) or 0) + 1
    return RiskModel(version=version, status="shadow", seed=1, features="[]", metrics="{}", rules_metrics="{}",
                     holdout="[]", params="{}", booster="", digest="0" * 64)


CASES: dict[str, Case] = {
    "order": Case(_order, _by_id(Order, lambda row_id, current, new: orders.transition(row_id, new, current)),
                  initials=("pending_payment", "paid"), effects=_order_effects,
                  plans=(("paid", "delivered", "disputed", "delivered", "refunded"),)),
    "wallet_topup": Case(_topup, _by_id(WalletTopUp, topups.move)),
    "payment": Case(_payment),  # moved inside refunds' functions only
    "refund": Case(_refund, _refund_move, effects=_refund_effects,
                   plans=(("failed", "requested", "processing", "failed", "succeeded"),)),
    "channel_order": Case(_channel_order, _claim_all("channel_order")),  # batch moves in payments.service
    "dispute": Case(_dispute, _by_id(Dispute, disputes.move)),
    "withdrawal": Case(_withdrawal, _by_object(Withdrawal, withdrawals.move)),
    "settlement_run": Case(_settlement_run, _by_id(SettlementRun, settlement.move_run)),
    "commission": Case(_commission, _claim_all("commission")),  # batch moves in commissions / settlement
    "realname": Case(_realname, initials=("pending", "failed")),  # moved inside the provider's answer only
    "card_import": Case(_card_import, _by_object(CardImport, cards.move_import)),
    "card_secret": Case(_card_secret, _card_secret_move),
    "supplier_attempt": Case(_attempt, _by_object(RechargeAttempt, recharge.move)),
    "alert": Case(_alert, _alert_move),
    "alert_delivery": Case(_alert_delivery, _by_object(AlertDelivery, alerts.move_delivery)),
    "delivery_notice": Case(_notice, _by_object(DeliveryNotice, notices.move)),
    "outbox_message": Case(_outbox, _outbox_move),
    "agent_shop": Case(_shop, _shop_move, record=_shop_record),
    "agent_shop_domain": Case(_domain, _domain_move, record=_domain_record),
    "risk_model": Case(_risk_model),  # promote() re-checks the model on its holdout: moved generically
}


def test_every_machine_has_a_property_test():
    """A new Machine needs a case here, so its moves are raced like the others'."""
    machines = {m.name for m in _drawing()}
    assert machines - set(CASES) == set(), "give these machines a Case in tests/test_state_properties.py"
    assert set(CASES) - machines == set(), "these cases name no Machine"


def _walk(machine: states.Machine, start: str, steps: int = 6) -> tuple[str, ...]:
    """A path along the table from `start` (new statuses first, ones that lead on before final ones)."""
    path, status, seen = [], start, {start}
    for _ in range(steps):
        options = sorted(machine.moves[status] - seen) or sorted(machine.moves[status] - {status})
        if not options:
            break
        status = min(options, key=lambda s: not machine.moves[s])
        path.append(status)
        seen.add(status)
    return tuple(path)


PARAMS = [pytest.param(name, initial, id=f"{name}-{initial}" if initial else name)
          for name, case in sorted(CASES.items()) for initial in (case.initials or (None,))]


@pytest.mark.parametrize(("entity", "initial"), PARAMS)
def test_concurrent_random_moves_follow_the_table_once_each(app, f, redis_url, monkeypatch, entity, initial):
    machine = _machine(entity)
    case = CASES[entity]
    move = case.move or _generic(entity)
    # The periodic job folds the order's rollup rows, as in production (without REDIS_URL each commit folds them
    # at once and they could not be counted); nothing here enqueues a job.
    monkeypatch.setitem(app.config, "REDIS_URL", redis_url)

    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.lists(st.sampled_from(machine.statuses), min_size=1, max_size=6), min_size=THREADS,
                    max_size=THREADS))
    def run(plans: list[list[str]]) -> None:
        row = case.build(f, initial)
        db.session.add(row)
        db.session.commit()
        row_id, start_status = row.id, row.status
        successes: list[tuple[str | None, str]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        def worker(plan: list[str]) -> None:
            with app.app_context():
                try:
                    start.wait()
                    for target in plan:
                        marks: list[tuple[str | None, AuditEntry]] = []

                        def mark(old: str | None, target: str = target, marks: list = marks) -> None:
                            marks.append((old, audit.record(MARK, entity, row_id, {"status": old},
                                                            {"status": target})))
                        try:
                            move(row_id, target, mark)
                            db.session.commit()
                        except (machine.illegal, machine.lost, states.IllegalMove):
                            db.session.rollback()  # refused, or another thread moved it first
                        # applied: its marker was committed with it (a rolled-back one is transient again)
                        applied = [(old, target) for old, entry in marks if inspect(entry).persistent]
                        with lock:
                            successes.extend(applied)
                except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                    db.session.rollback()
                    errors.append(exc)
                finally:
                    db.session.remove()

        threads = [threading.Thread(target=worker, args=(plan,)) for plan in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors

        db.session.rollback()
        entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == MARK,
                                                              AuditEntry.target_type == entity,
                                                              AuditEntry.target_id == str(row_id))
                                     .order_by(AuditEntry.id)).all()
        marked = [(json.loads(e.old_value)["status"], json.loads(e.new_value)["status"]) for e in entries]
        # each applied move wrote its marker once, and nothing else did
        assert sorted(marked, key=str) == sorted(successes, key=str)
        chain = marked
        if case.record is not None:  # the entity's own record of its moves: one entry per applied move
            chain = case.record(row)
            assert sorted(new for _old, new in chain) == sorted(new for _old, new in marked), (chain, marked)
            # an audited change that keeps the status (a requested domain replaced by another) is no move
            chain = [(old, new) for old, new in chain if old != new or machine.allows(old, new)]
        # one chain along the table, from the status the row was made in to where it is
        status = start_status
        for old, new in chain:
            assert old == status, chain
            assert machine.allows(old, new), (old, new)
            status = new
        row = db.session.get(machine.model, row_id, populate_existing=True)
        assert row.status == status
        if case.effects is not None:
            case.effects(row, chain)

    # Every thread on the same path at once (each move raced by all), then the drawn plans.
    start = initial or machine.initial[0]
    for plan in (_walk(machine, start), *case.plans):
        run = example([list(plan)] * THREADS)(run)
    run()

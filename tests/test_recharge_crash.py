"""Direct top-ups (直充) through crashes and outages, on PostgreSQL with real processes:

- a real `flask kameng worker` process killed with SIGKILL while its job waits on the supplier's answer: the
  outbox sweeper and the scheduled poll finish every order, delivered once or refunded once, never credited twice
  (and never sent to a second supplier while the first may have credited);
- Redis stopped (a private redis-server): wallet and storefront payments still succeed, their recharge jobs wait
  in the outbox, and once Redis is back the sweep and a worker deliver every order once.

The `app` fixture checks the ledger after each test; each test also checks it itself.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import select, update

from app.clock import utcnow
from app.extensions import db
from app.ledger.invariants import check_ledger
from app.ledger.service import balance_of
from app.openapi.models import ApiNonce
from app.outbox.models import OutboxMessage
from app.payments.models import Refund
from tests import supplier_sim_helpers
from tests.payments_helpers import sandbox_form, setup_sandbox, trade_no
from tests.recharge_helpers import (
    ACCOUNT,
    COMMISSION,
    PRICE,
    START_BALANCE,
    attempts,
    commissions_of,
    count_sales,
    events,
    journal_keys,
    make_poll_due,
    order,
    outbox_for,
    place_api,
    poll_now,
    work,
    world,
)
from tests.recharge_helpers import second_sim as second_sim  # noqa: PLC0414  (the fixture, re-exported)
from tests.supplier_sim_helpers import sim_supplier

supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).parent / "flask")
OPEN = ("submitting", "submitted", "processing", "unknown")
# Worker processes start slowly on a loaded machine (the app imports FAB and Dash): the upstream answers the
# first submits only after this long, so every worker is still inside its job when the test kills it.
SLOW_UPSTREAM_MS = 110_000
SUPPLIER_TIMEOUT_S = 120  # (the most a supplier allows) longer than the slow answer: no timeout before the kill


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wallet(buyer_id: int) -> int:
    from app.ledger.service import agent_balances

    db.session.rollback()
    return agent_balances(buyer_id)["wallet"]


def worker_process(database_url: str, redis_url: str, log) -> subprocess.Popen:
    """`flask --app run kameng worker --burst` as production runs it, against the test database and Redis."""
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, FAB_CREATE_DB="False",
               FAB_UPDATE_PERMS="False", PYTHONUNBUFFERED="1", OUTBOUND_ALLOW_PRIVATE="true")
    env.pop("PUBLIC_BASE_URL", None)  # no callbacks: the poll alone must find out
    return subprocess.Popen([FLASK, "--app", "run", "kameng", "worker", "--burst", "--no-cron", "--queues", "high"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, timeout: float, what: str, logs=None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = ""
            for path in logs or ():
                tail += f"\n--- {path}\n" + Path(path).read_text(errors="replace")[-3000:]
            raise AssertionError(f"{what}: not within {timeout} s{tail}")
        time.sleep(0.2)


def assert_final(order_no: str, sims, parent_id: int | None = None) -> str:
    """Exactly one definite end: delivered (sale once, credited once upstream, nowhere else) or refunded after
    failing (hold and refund, no sale, credited nowhere). Returns the status."""
    o = order(order_no)
    credits = {name: sim.orders().get(order_no, {}).get("credits", 0) for name, sim in sims.items()}
    assert all(c <= 1 for c in credits.values()), (order_no, credits)
    keys = [k for k in journal_keys(order_no) if k.startswith("order:")]  # (commission journals aside)
    assert not [a for a in attempts(order_no) if a.status in OPEN], order_no
    if o.status == "delivered":
        assert o.upstream_status == "success" and o.delivered_at is not None
        assert count_sales(order_no) == 1 and sum(credits.values()) == 1, (order_no, credits)
        [winner] = [a for a in attempts(order_no) if a.status == "success"]
        assert winner.supplier_id == o.supplier_id
        if o.channel == "wallet":
            assert keys == sorted([f"order:{order_no}:hold", f"order:{order_no}:sale"])
        if parent_id is not None:  # the buyer's parent earns its direct commission once
            assert commissions_of(order_no) == [(parent_id, COMMISSION, "pending")]
    else:
        assert o.status == "refunded" and o.upstream_status == "failed", (order_no, o.status)
        assert count_sales(order_no) == 0 and sum(credits.values()) == 0 and commissions_of(order_no) == []
        assert ("refund", "failed") in events(order_no)
        assert all(a.status == "failed" for a in attempts(order_no))
        if o.channel == "wallet":
            assert keys == sorted([f"order:{order_no}:hold", f"order:{order_no}:refund"])
        assert db.session.scalar(select(Refund.amount).where(Refund.order_id == o.id)) == o.amount
    return o.status


# --- a worker killed inside the job ------------------------------------------------------------------------------

@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_worker_killed_inside_the_submit_every_order_ends_once(app, client, f, pg_url, redis_url, supplier_sim,
                                                              second_sim):
    app.config["REDIS_URL"] = redis_url
    logs: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        _killed_worker_scenario(app, client, f, pg_url, redis_url, supplier_sim, second_sim, logs, procs)
    finally:
        app.config["REDIS_URL"] = None
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for path in logs:
            Path(path).unlink(missing_ok=True)


def _killed_worker_scenario(app, client, f, pg_url, redis_url, sim1, sim2, logs, procs):
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    from workers import jobs
    from workers.queues import get_queue

    w = world(f)
    # Three kinds of direct product, each at two suppliers (sim1 first, sim2 the fail-over):
    #   CMCC-10 credits at once, CMCC-30 stays processing for one more query, CMCC-50 is refused (failed).
    credited = w.product
    pending = f.product(kind="direct", face_price=1_000, cost=880, name=f.unique("话费30"))
    refused = f.product(kind="direct", face_price=1_000, cost=880, name=f.unique("话费50"))
    codes = {credited.id: "CMCC-10", pending.id: "CMCC-30", refused.id: "CMCC-50"}
    sup1 = sim_supplier(sim1, priority=1, timeout_seconds=SUPPLIER_TIMEOUT_S,
                        mappings={pid: (code, 900) for pid, code in codes.items()})
    sup2 = sim_supplier(sim2, priority=2, timeout_seconds=SUPPLIER_TIMEOUT_S,
                        mappings={pid: (code, 900) for pid, code in codes.items()})
    sim1.behave("CMCC-30", mode="pending", pending_polls=1, callback="none")
    sim1.behave("CMCC-50", mode="fail", callback="none")
    sim2.behave("CMCC-50", mode="fail", callback="none")
    sim1.sim.latency_ms = SLOW_UPSTREAM_MS  # every answer of sim1 is slow until the workers are dead

    # Five paid orders; their recharge jobs wait in Redis (queue high) for the worker processes.
    def pay(product) -> str:
        w.product = product
        return place_api(client, w)["order_no"]

    a, b, c = pay(credited), pay(pending), pay(refused)
    d, e = pay(credited), pay(credited)
    w.product = credited
    all_orders = [a, b, c, d, e]
    assert wallet(w.buyer.id) == START_BALANCE - 5 * PRICE
    assert get_queue("high").get_job_ids() == [f"recharge-{n}" for n in all_orders]

    # Three real worker processes; each takes one job (FIFO: a, b, c) and waits on sim1's slow answer.
    for i in range(3):
        log = tempfile.NamedTemporaryFile("w", prefix=f"kameng-crash-worker{i}-", suffix=".log", delete=False)
        logs.append(log.name)
        procs.append(worker_process(pg_url, redis_url, log))
        log.close()
    wait_for(lambda: set(sim1.orders()) >= {a, b, c}, SLOW_UPSTREAM_MS / 1000 - 15,
             "the three workers' submits reached the upstream", logs)
    assert all(p.poll() is None for p in procs), "a worker exited before the kill"
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)  # inside the job: the HTTP answer has not come back
    for proc in procs:
        assert proc.wait(timeout=30) == -signal.SIGKILL
    sim1.sim.latency_ms = 0

    # What the dead workers left: the upstream acted (a credited, b processing, c refused), our attempts are
    # still 'submitting', the orders 'delivering' with the money held; d and e were never taken.
    upstream = sim1.orders()
    assert set(upstream) == {a, b, c}
    assert [(upstream[n]["status"], upstream[n]["credits"]) for n in (a, b, c)] == \
        [("success", 1), ("processing", 0), ("failed", 0)]
    for n in (a, b, c):
        assert order(n).status == "delivering" and order(n).upstream_status == "submitting"
        assert [(x.supplier_id, x.status) for x in attempts(n)] == [(sup1.id, "submitting")]
        assert [(m.status, m.attempts) for m in outbox_for(n)] == [("pending", 1)]
    for n in (d, e):
        assert order(n).status == "paid" and attempts(n) == []
    assert balance_of("platform:buyer_funds") == 5 * PRICE
    assert sim2.orders() == {}
    high = get_queue("high")
    assert high.get_job_ids() == [f"recharge-{d}", f"recharge-{e}"]
    started = StartedJobRegistry(queue=high)
    assert sorted(started.get_job_ids(cleanup=False)) == sorted(f"recharge-{n}" for n in (a, b, c))

    # A new worker takes what is still queued (d, e). RQ does not run the dead workers' jobs again.
    work()
    for n in (d, e):
        assert order(n).status == "delivered"
    for n in (a, b, c):
        assert order(n).status == "delivering" and [x.status for x in attempts(n)] == ["submitting"]

    # RQ's view: once the dead execution's heartbeat (job timeout + 60 s) has expired, the registry cleanup
    # marks those jobs failed (AbandonedJobError). That decides nothing: the orders are still open in the
    # database, and the database is what the sweeper and the poll read.
    started.cleanup(time.time() + 1800 + 120)
    failed = FailedJobRegistry(queue=high)
    assert {f"recharge-{n}" for n in (a, b, c)} <= set(failed.get_job_ids(cleanup=False))
    assert started.get_job_ids(cleanup=False) == []
    assert {order(n).status for n in (a, b, c)} == {"delivering"}

    # The scheduler's periodic jobs, once their time has come (REDISPATCH_AFTER for the outbox messages handed to
    # the dead workers, the attempts' first poll after the supplier's timeout): then a worker runs what they
    # queued. The killed submits are asked about at sim1, never sent to sim2 while sim1 may have credited.
    db.session.execute(update(OutboxMessage).where(OutboxMessage.status == "pending")
                       .values(dispatched_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    for n in (a, b, c):
        make_poll_due(n)
    assert jobs.sweep_outbox() == 3
    # Re-dispatched under the same ids, they leave the failed registry (the jobs page would show them failed).
    assert not {f"recharge-{n}" for n in (a, b, c)} & set(failed.get_job_ids(cleanup=False))
    assert jobs.poll_recharges() == {"claimed": 3}
    work()
    for _ in range(6):  # b needs one more question before sim1 finishes it; each round is one scheduled poll
        if not any(make_poll_due(n) for n in all_orders):
            break
        poll_now()

    # Every order ended once: a, b, d, e delivered by sim1 (a credited exactly once although its submit was
    # never answered), c refused by both suppliers and refunded to the wallet.
    sims = {"sim1": sim1, "sim2": sim2}
    ends = {n: assert_final(n, sims, w.parent.id) for n in all_orders}
    assert ends == {a: "delivered", b: "delivered", c: "refunded", d: "delivered", e: "delivered"}
    for n in (a, b, d, e):
        assert order(n).supplier_id == sup1.id
        assert [x.supplier_id for x in attempts(n)] == [sup1.id]  # never elsewhere
    assert [(x.supplier_id, x.status) for x in attempts(c)] == [(sup1.id, "failed"), (sup2.id, "failed")]
    assert set(sim2.orders()) == {c}
    assert sim1.orders()[a]["submits"] == 1  # the recovery asked (query), it did not send again
    assert all(sim1.orders()[n]["credits"] == 1 for n in (a, b, d, e))
    assert wallet(w.buyer.id) == START_BALANCE - 4 * PRICE  # charged once per delivered order, c given back
    assert balance_of("platform:buyer_funds") == 0
    assert {m.status for n in all_orders for m in outbox_for(n)} == {"done"}
    # A re-run of every job changes nothing.
    from app.suppliers import recharge
    assert {recharge.run(order(n).id) for n in all_orders} == {"done"}
    assert ends == {n: assert_final(n, sims) for n in all_orders}
    assert check_ledger() == []


# --- Redis down while orders are paid --------------------------------------------------------------------------

class PrivateRedis:
    """A redis-server of our own on a free port, to stop and start again (same port, nothing persisted)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--daemonize", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            wait_for(lambda: self._answers(probe), 20, f"redis-server on port {self.port}")
        finally:
            probe.close()

    @staticmethod
    def _answers(probe: Redis) -> bool:
        try:
            return bool(probe.ping())
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_redis_outage_payments_succeed_and_every_order_completes_after(app, client, f, supplier_sim,
                                                                       private_redis):
    from app.orders.service import place_wallet_order
    from app.outbox.service import dispatch_due
    from workers import jobs
    from workers.queues import get_queue

    w = world(f)
    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    setup_sandbox()
    app.config["REDIS_URL"] = private_redis.url
    try:
        assert get_queue("high").count == 0  # it works before the outage
        private_redis.stop()

        # Redis is down. Wallet orders through the Open API and through the service, and a storefront order
        # paid by the sandbox channel's notification: every payment succeeds.
        api_orders = [place_api(client, w) for _ in range(2)]
        assert [body["status"] for body in api_orders] == ["paid", "paid"]
        by_service = place_wallet_order(w.buyer.id, w.product.id, 1, out_trade_no=uuid.uuid4().hex,
                                        account=ACCOUNT)
        by_service_no = by_service.order_no
        dispatch_due()  # what the end of a request does after its commit: here it cannot reach Redis
        r = client.post("/shop/api/orders", json={"product_id": w.product.id, "quantity": 1,
                                                  "contact": "13900000000", "query_password": "secret-123",
                                                  "channel": "sandbox", "account": ACCOUNT})
        assert r.status_code == 201, r.get_data(as_text=True)
        shop_no, amount = r.get_json()["order_no"], r.get_json()["amount"]
        r = client.post("/pay/notify/sandbox", data=sandbox_form(shop_no, trade_no(), amount))
        assert r.status_code == 200 and r.get_data(as_text=True) == "success"

        wallet_orders = [body["order_no"] for body in api_orders] + [by_service_no]
        all_orders = wallet_orders + [shop_no]
        for n in all_orders:
            assert order(n).status == "paid" and attempts(n) == []
            # The outbox row was written with the payment; its dispatch failed softly and left it due at once.
            [message] = outbox_for(n)
            assert (message.status, message.attempts, message.dispatched_at) == ("pending", 0, None)
        assert wallet(w.buyer.id) == START_BALANCE - 3 * PRICE
        assert balance_of("platform:buyer_funds") == 3 * PRICE + amount
        assert db.session.scalar(select(ApiNonce.id).limit(1)) is not None  # Open API nonces fell back to the DB
        # The periodic sweep during the outage fails softly too.
        assert jobs.sweep_outbox() == 4
        assert all(outbox_for(n)[0].dispatched_at is None for n in all_orders)
        assert supplier_sim.orders() == {}

        # Redis is back (empty: nothing was enqueued during the outage). The sweep hands the four jobs over and
        # a worker runs them: every order delivered, credited once.
        private_redis.start()
        assert get_queue("high").count == 0
        assert jobs.sweep_outbox() == 4
        assert sorted(get_queue("high").get_job_ids()) == sorted(f"recharge-{n}" for n in all_orders)
        work()
    finally:
        app.config["REDIS_URL"] = None

    for n in all_orders:
        parent = w.parent.id if n in wallet_orders else None
        assert assert_final(n, {"sim": supplier_sim}, parent) == "delivered"
        assert order(n).supplier_id == sup.id
        assert supplier_sim.orders()[n]["submits"] == 1
        assert [m.status for m in outbox_for(n)] == ["done"]
    assert wallet(w.buyer.id) == START_BALANCE - 3 * PRICE
    assert balance_of("platform:buyer_funds") == 0
    assert jobs.sweep_outbox() == 0
    assert check_ledger() == []

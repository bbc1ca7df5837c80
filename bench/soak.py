"""Soak under faults: `python bench/soak.py --minutes M [--clients 16]`.

Starts the multi-host layout on this machine (deploy/stack.py: nginx, two gunicorn processes, two workers, a
PostgreSQL cluster and a redis-server of its own, the supplier simulator), then sends mixed traffic through nginx for
M minutes while faults are injected on a schedule:

  1/5 of the way: PostgreSQL restarted (fast shutdown: every connection cut, then started again)
  2/5:            Redis restarted (nothing persisted: queued jobs are lost; the outbox re-dispatches them)
  3/5:            a worker killed (SIGKILL, mid-job), started again a second later (systemd's Restart=always)
  4/5:            a web process killed (SIGKILL: gunicorn and its workers), started again a second later

Traffic (threads, each a client that follows Retry-After with a cap of 1 s and repeats the same request, as a
reseller's integration does): Open API card purchases, storefront checkouts paid by a sandbox notification and read
back by lookup, direct top-ups (Open API) that the workers submit to the supplier simulator, and dashboards (a
manager loading the GMV page and its Dash layout). A supervisor restarts any part that dies, as systemd would, and
says so.

Printed per fault: answers by status in its window, how long the fault lasted (until the part was back), and the
time to recover (from the part being back to the last failed answer of the window: 5xx or no answer). Then,
after the traffic stops and the backlog drains, the invariants: the ledger (`flask kameng ledger-check`), no order
paid and undelivered past its SLA, no duplicate delivery (one sale journal per delivered order, no card secret in two
orders, no top-up credited twice upstream), the outbox drained. Exit 1 when an invariant fails or any answer was 500.
Target: zero 500s, recovery <= 5 s after each fault, every invariant holds.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.services import wait_until  # noqa: E402
from deploy.stack import DEMO_PASSWORD, SANDBOX_KEY, Stack  # noqa: E402

RETRY_CAP_SECONDS = 1.0
GIVE_UP_SECONDS = 60.0
FAILED = "failed"  # 5xx or no answer


@dataclass
class Answer:
    at: float
    kind: str
    status: str  # "201", "503", "error:ConnectionError"


@dataclass
class Journal:
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: Counter = field(default_factory=Counter)
    gave_up: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, status: str) -> None:
        with self.lock:
            self.answers.append(Answer(time.monotonic(), kind, status))

    def note(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.lock:
            self.notes.append(f"{stamp} {text}")
        print(f"    [{stamp}] {text}", flush=True)


def failed(status: str) -> bool:
    return status.startswith("error") or status.startswith("5")


# --- clients --------------------------------------------------------------------------------------------------

class Client:
    """One client thread's HTTP: every answer is journaled; 503 and no-answer are retried after Retry-After."""

    def __init__(self, journal: Journal, stop: threading.Event, kind: str):
        self.journal, self.stop, self.kind = journal, stop, kind
        self.http = requests.Session()

    def call(self, send, ok=lambda r: r.status_code < 500, kind: str | None = None) -> requests.Response | None:
        """send() until it gets an answer that is not a failure (or GIVE_UP_SECONDS pass)."""
        kind = kind or self.kind
        started = time.monotonic()
        while True:
            try:
                r = send()
                status = str(r.status_code)
            except requests.RequestException as exc:
                r, status = None, f"error:{type(exc).__name__}"
                self.http.close()  # a connection nginx dropped is not reused
            self.journal.add(kind, status)
            if r is not None and ok(r):
                return r
            if time.monotonic() - started > GIVE_UP_SECONDS or self.stop.is_set():
                self.journal.gave_up[kind] += 1
                return None
            wait = RETRY_CAP_SECONDS
            if r is not None and r.headers.get("Retry-After", "").isdigit():
                wait = min(float(r.headers["Retry-After"]), RETRY_CAP_SECONDS)
            time.sleep(wait)


def open_api_buyer(base: str, key: dict, product_id: int, journal: Journal, stop: threading.Event) -> None:
    from app.openapi.client import OpenApiClient

    client = Client(journal, stop, "openapi")
    api = OpenApiClient(base, key["app_key"], key["app_secret"], timeout=30, session=client.http)
    while not stop.is_set():
        out_trade_no = uuid.uuid4().hex  # the same one on every retry: the purchase happens once
        r = client.call(lambda o=out_trade_no: api.create_order(o, product_id))
        if r is not None and r.status_code in (200, 201) and r.json().get("status") == "delivered":
            journal.completed["openapi purchase"] += 1
        elif r is not None:
            journal.note(f"open api purchase answered {r.status_code}: {r.text[:160]}")


def storefront_buyer(base: str, product_id: int, journal: Journal, stop: threading.Event) -> None:
    from app.payments.channels import sandbox

    client = Client(journal, stop, "storefront")
    password = "soak-" + uuid.uuid4().hex[:10]
    while not stop.is_set():
        contact = "139" + str(random.randint(10_000_000, 99_999_999))
        body = {"product_id": product_id, "quantity": 1, "contact": contact, "query_password": password,
                "channel": "sandbox"}
        r = client.call(lambda b=body: client.http.post(base + "/shop/api/orders", timeout=30, json=b))
        if r is None or r.status_code != 201:
            if r is not None:
                journal.note(f"checkout answered {r.status_code}: {r.text[:160]}")
            continue
        order_no, amount = r.json()["order_no"], r.json()["amount"]
        fields = {"order_no": order_no, "trade_no": "SOAK" + uuid.uuid4().hex[:20], "amount": str(amount),
                  "currency": "CNY", "status": "SUCCESS", "ts": str(int(time.time())), "nonce": uuid.uuid4().hex}
        fields["sign"] = sandbox.sign(SANDBOX_KEY, fields)
        r = client.call(lambda f=fields: client.http.post(base + "/pay/notify/sandbox", data=f, timeout=30),
                        kind="notify")
        if r is None or r.text != "success":
            if r is not None:
                journal.note(f"notification answered {r.status_code}: {r.text[:160]}")
            continue
        lookup = {"order_no": order_no, "query_password": password}
        r = client.call(lambda b=lookup: client.http.post(base + "/shop/api/lookup", timeout=30, json=b),
                        kind="lookup")
        if r is not None and r.status_code == 200 and r.json().get("status") == "delivered":
            journal.completed["storefront paid and delivered"] += 1


def topup_buyer(base: str, key: dict, product_id: int, journal: Journal, stop: threading.Event) -> None:
    from app.openapi.client import OpenApiClient

    client = Client(journal, stop, "topup")
    api = OpenApiClient(base, key["app_key"], key["app_secret"], timeout=30, session=client.http)
    while not stop.is_set():
        out_trade_no = uuid.uuid4().hex
        account = "138" + str(random.randint(10_000_000, 99_999_999))
        r = client.call(lambda o=out_trade_no, a=account: api.create_order(o, product_id, account=a))
        if r is not None and r.status_code in (200, 201):
            journal.completed["top-up paid"] += 1
        elif r is not None:
            journal.note(f"top-up answered {r.status_code}: {r.text[:160]}")
        stop.wait(0.2)


def dashboard_viewer(base: str, journal: Journal, stop: threading.Event) -> None:
    client = Client(journal, stop, "dashboard")

    def login() -> bool:
        page = client.call(lambda: client.http.get(base + "/login/", timeout=30))
        match = page is not None and re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text)
        if not match:
            return False
        r = client.call(lambda: client.http.post(base + "/login/", timeout=30, allow_redirects=False, data={
            "username": "manager", "password": DEMO_PASSWORD, "csrf_token": match.group(1)}))
        return r is not None and r.status_code == 302

    signed_in = False
    while not stop.is_set():
        if not signed_in:
            signed_in = login()
            continue
        for path in ("/analytics/gmv/", "/dashboards/gmv/_dash-layout"):
            r = client.call(lambda p=path: client.http.get(base + p, timeout=30, allow_redirects=False))
            if r is not None and r.status_code == 302:
                signed_in = False
                break
            if r is not None and r.status_code == 200:
                journal.completed["dashboard loads"] += 1
        stop.wait(0.5)


# --- set-up --------------------------------------------------------------------------------------------------

def prepare(stack: Stack, minutes: float) -> dict:
    """Money, stock, keys and limits for the traffic, through the services, in this process."""
    os.environ.update(KAMENG_ENV="development", DATABASE_URL=stack.database_url, OUTBOUND_ALLOW_PRIVATE="true")
    from app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": stack.database_url.replace("postgresql://", "postgresql+psycopg://"),
                      "FAB_CREATE_DB": False, "FAB_UPDATE_PERMS": False, "REDIS_URL": None})
    with app.app_context():
        from sqlalchemy import select, update

        from app.agents.models import Agent, Tier
        from app.catalog import cards
        from app.catalog.models import Product
        from app.extensions import db
        from app.ledger import service as ledger
        from app.openapi import service as openapi
        from app.risk.models import RiskRule

        # The traffic is one address buying far past a real reseller's day: risk rules and limits are not measured.
        db.session.execute(update(RiskRule).values(status="draft"))
        db.session.execute(update(Tier).values(risk_order_limit=10 ** 12, risk_daily_limit=10 ** 12, daily_limit=0))
        db.session.commit()
        agents = list(db.session.scalars(select(Agent).order_by(Agent.id)))[:3]
        keys = []
        for agent in agents:
            ledger.post_journal(f"soak:fund:{agent.id}:{uuid.uuid4().hex}", "adjustment", [
                ledger.Line(ledger.agent_account_code(agent.id, "wallet"), 500_000_000),
                ledger.Line("platform:adjustments", -500_000_000)])
            db.session.commit()
            key, secret = openapi.create_key(agent.id, "soak", None)
            db.session.commit()
            keys.append({"app_key": key.app_key, "app_secret": secret})
        card_products = list(db.session.scalars(select(Product.id).where(Product.kind == "card", Product.active)
                                                .order_by(Product.id)))
        phone = db.session.scalar(select(Product.id).where(Product.kind == "direct", Product.name.like("%话费%")))
        per_product = max(3000, int(1500 * minutes))
        for pid in card_products:
            tag = uuid.uuid4().hex[:8]
            batch = cards.create_import(pid, "\n".join(f"SOAK{pid:03d}-{tag}-{n:07d}" for n in range(per_product)),
                                        None, "cli")
            cards.run_import(batch.id)
        db.session.remove()
        db.engine.dispose()
    return {"keys": keys, "cards": card_products, "phone": phone, "stock_per_card": per_product}


# --- faults ---------------------------------------------------------------------------------------------------

@dataclass
class Fault:
    name: str
    started: float = 0.0
    back: float = 0.0


def inject(stack: Stack, name: str, journal: Journal, supervisor) -> Fault:
    fault = Fault(name, started=time.monotonic())
    journal.note(f"fault: {name}")
    if name == "PostgreSQL restart":
        stack.pg.restart()
    elif name == "Redis restart":
        stack.redis.restart()
    elif name == "worker killed":
        with supervisor.paused():
            stack.kill("worker0")
            time.sleep(1)
            stack.restart("worker0")
        wait_until(lambda: stack.worker_registered("worker0"), 120, "the restarted worker's registration", 0.2)
    elif name == "web process killed":
        with supervisor.paused():
            stack.kill("web0")
            time.sleep(1)
            stack.restart("web0")
        stack.wait_web(0, timeout=120)
    fault.back = time.monotonic()
    journal.note(f"back after {fault.back - fault.started:.1f} s: {name}")
    return fault


class Supervisor:
    """systemd's Restart=always for the parts: a part found dead is started again after a second."""

    def __init__(self, stack: Stack, journal: Journal):
        self.stack, self.journal = stack, journal
        self.stop = threading.Event()
        self.hold = threading.Lock()
        self.restarts: Counter = Counter()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def paused(self):
        return self.hold

    def run(self) -> None:
        while not self.stop.wait(1.0):
            with self.hold:
                for name, proc in list(self.stack.procs.items()):
                    if self.stop.is_set() or name == "supplier-sim" or proc.alive():
                        continue
                    self.journal.note(f"supervisor: {name} had exited (code {proc.popen.returncode}); restarting")
                    self.restarts[name] += 1
                    self.stack.restart(name)


# --- invariants -------------------------------------------------------------------------------------------------

def open_work(url: str) -> dict:
    import psycopg

    with psycopg.connect(url) as conn:
        return {
            "orders paid, not delivered": conn.execute(
                "SELECT count(*) FROM orders WHERE status IN ('paid', 'delivering')").fetchone()[0],
            "outbox pending": conn.execute(
                "SELECT count(*) FROM outbox_message WHERE status = 'pending'").fetchone()[0],
        }


def invariants(stack: Stack, sla_seconds: int) -> list[tuple[str, bool, str]]:
    import psycopg

    results = []
    try:
        out = stack.flask("kameng", "ledger-check").strip().splitlines()[-1]
        results.append(("ledger-check", True, out))
    except RuntimeError as exc:
        results.append(("ledger-check", False, str(exc)[-600:]))
    with psycopg.connect(stack.database_url) as conn:
        overdue = conn.execute("SELECT count(*) FROM orders WHERE status IN ('paid', 'delivering') AND paid_at < "
                               "now() AT TIME ZONE 'UTC' - make_interval(secs => %s)", (sla_seconds,)).fetchone()
        waiting = conn.execute("SELECT count(*) FROM orders WHERE status IN ('paid', 'delivering')").fetchone()[0]
        results.append(("no order paid and undelivered past its SLA", overdue[0] == 0,
                        f"{overdue[0]} past {sla_seconds} s; {waiting} paid and not yet delivered in all"))
        # (ledger-check also holds every delivered order to exactly one sale journal and each secret to one order)
        doubled = conn.execute("SELECT count(*) FROM (SELECT o.id FROM orders o JOIN ledger_journal j ON "
                               "j.order_id = o.id AND j.kind = 'sale' GROUP BY o.id HAVING count(*) > 1) t"
                               ).fetchone()[0]
        delivered = conn.execute("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status").fetchall()
        direct_delivered = {r[0] for r in conn.execute(
            "SELECT o.order_no FROM orders o JOIN product p ON p.id = o.product_id WHERE p.kind = 'direct' "
            "AND o.status = 'delivered'")}
        pending = conn.execute("SELECT count(*) FROM outbox_message WHERE status = 'pending'").fetchone()[0]
        failed_msgs = conn.execute("SELECT count(*) FROM outbox_message WHERE status = 'failed'").fetchone()[0]
    upstream = requests.get(f"http://127.0.0.1:{stack.supplier_port}/_sim/orders", timeout=30).json()["orders"]
    credits = {o["order_no"]: o.get("credits", 0) for o in upstream}
    twice = [n for n, c in credits.items() if c > 1]
    not_credited = [n for n in direct_delivered if credits.get(n, 0) != 1]
    results.append(("no duplicate delivery", doubled == 0 and not twice and not not_credited,
                    f"orders with two sale journals {doubled}; top-ups credited twice upstream {len(twice)}; "
                    f"delivered top-ups not credited exactly once {len(not_credited)} "
                    f"(of {len(direct_delivered)})"))
    results.append(("outbox drained", pending == 0, f"{pending} pending, {failed_msgs} given up"))
    results.append(("orders by status", True, ", ".join(f"{s} {n}" for s, n in delivered)))
    return results


# --- the run --------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16, help="client threads (mix: half Open API purchases, a "
                                                                "quarter storefront, the rest top-ups and dashboards)")
    parser.add_argument("--drain-seconds", type=int, default=300, help="how long the backlog may take to drain")
    parser.add_argument("--supplier-latency-ms", type=int, default=300,
                        help="the supplier simulator's answer time: a worker killed is then likely inside a top-up")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    duration = args.minutes * 60
    print(f"soak: {args.minutes:g} min, {args.clients} clients, faults at 1/5, 2/5, 3/5, 4/5, the supplier answers "
          f"in {args.supplier_latency_ms} ms", flush=True)
    stack = Stack(supplier_latency_ms=args.supplier_latency_ms,
                  extra_env={"RISK_ORDER_LIMIT_FEN": str(10 ** 12), "RISK_DAILY_LIMIT_FEN": str(10 ** 12),
                             "DELIVERY_SLA_MINUTES": "10"})
    journal = Journal()
    supervisor = Supervisor(stack, journal)
    ok = False
    try:
        stack.start()
        setup = prepare(stack, args.minutes)
        print(f"  data: {len(setup['keys'])} resellers with API keys, {setup['stock_per_card']} secrets on each of "
              f"{len(setup['cards'])} card products, top-ups of product {setup['phone']}", flush=True)
        ok = run(stack, setup, journal, supervisor, args, duration)
    except Exception as exc:  # the report names it; the logs are kept
        print(f"soak aborted: {type(exc).__name__}: {exc}", flush=True)
        ok = False
    finally:
        supervisor.stop.set()
        with supervisor.hold:  # not in the middle of a restart while everything stops
            pass
        keep = args.keep or not ok
        stack.destroy(keep_logs=keep)
        if keep:
            print(f"  logs: {stack.logs}")
    return 0 if ok else 1


def run(stack: Stack, setup: dict, journal: Journal, supervisor, args, duration: float) -> bool:
    base = stack.base_url
    stop = threading.Event()
    n = args.clients
    plan = ([("openapi", i) for i in range(max(1, n // 2))] + [("storefront", i) for i in range(max(1, n // 4))])
    rest = max(0, n - len(plan))
    plan += [("topup", i) for i in range(max(1, rest - rest // 2))] + [("dashboard", i) for i in range(rest // 2)]
    threads = []
    for kind, i in plan:
        key = setup["keys"][i % len(setup["keys"])]
        card = setup["cards"][i % len(setup["cards"])]
        target, targs = {
            "openapi": (open_api_buyer, (base, key, card, journal, stop)),
            "storefront": (storefront_buyer, (base, card, journal, stop)),
            "topup": (topup_buyer, (base, key, setup["phone"], journal, stop)),
            "dashboard": (dashboard_viewer, (base, journal, stop)),
        }[kind]
        threads.append(threading.Thread(target=target, args=targs, daemon=True, name=f"{kind}{i}"))
    print(f"  clients: {', '.join(f'{k} {v}' for k, v in Counter(k for k, _ in plan).items())}", flush=True)
    supervisor.thread.start()
    t0 = time.monotonic()
    for t in threads:
        t.start()
    faults: list[Fault] = []
    names = ["PostgreSQL restart", "Redis restart", "worker killed", "web process killed"]
    for k, name in enumerate(names, start=1):
        at = t0 + duration * k / 5
        while time.monotonic() < at:
            time.sleep(0.2)
        faults.append(inject(stack, name, journal, supervisor))
    while time.monotonic() < t0 + duration:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=90)
    traffic_end = time.monotonic()
    print(f"  traffic stopped after {traffic_end - t0:.0f} s; draining the backlog", flush=True)
    drained_in = None
    deadline = time.monotonic() + args.drain_seconds
    while time.monotonic() < deadline:
        work = open_work(stack.database_url)
        if not any(work.values()):
            drained_in = time.monotonic() - traffic_end
            break
        time.sleep(2)
    supervisor.stop.set()
    return report(stack, journal, faults, t0, traffic_end, drained_in, supervisor)


def report(stack: Stack, journal: Journal, faults: list[Fault], t0: float, end: float, drained_in: float | None,
           supervisor: Supervisor) -> bool:
    answers = sorted(journal.answers, key=lambda a: a.at)
    total = Counter(a.status for a in answers)
    print("\n== answers, whole run:", ", ".join(f"{s} {c}" for s, c in sorted(total.items())))
    print("   completed:", ", ".join(f"{k} {v}" for k, v in sorted(journal.completed.items())),
          "| gave up:", dict(journal.gave_up) or 0)
    windows = [("baseline", t0, None)] + [(f.name, f.started, f) for f in faults]
    worst = 0.0
    print("\n== per fault (window: from the fault to the next one)")
    for idx, (name, start, fault) in enumerate(windows):
        stop = windows[idx + 1][1] if idx + 1 < len(windows) else end
        inside = [a for a in answers if start <= a.at < stop]
        by_status = Counter(a.status for a in inside)
        bad = [a for a in inside if failed(a.status)]
        line = f"  {name:<20} answers {len(inside):>6}: " + ", ".join(f"{s} {c}" for s, c in sorted(by_status.items()))
        if fault is not None:
            lasted = fault.back - fault.started
            recovery = max(0.0, bad[-1].at - fault.back) if bad else 0.0
            first_bad = (bad[0].at - fault.started) if bad else None
            worst = max(worst, recovery)
            line += (f"\n  {'':<20} part back after {lasted:.1f} s; failed answers {len(bad)}"
                     + (f" (from +{first_bad:.1f} s to +{bad[-1].at - fault.started:.1f} s)" if bad else "")
                     + f"; recovered {recovery:.1f} s after the part was back")
            kinds = Counter(a.kind for a in bad)
            if kinds:
                line += f"; failed by client: {dict(kinds)}"
        print(line)
    if supervisor.restarts:
        print(f"  supervisor restarts (parts that died by themselves): {dict(supervisor.restarts)}")
    drained = f"in {drained_in:.0f} s" if drained_in is not None else "NOT within the limit"
    print(f"\n== backlog drained {drained} after the traffic stopped")
    results = invariants(stack, 600)
    print("\n== invariants")
    for name, passed, detail in results:
        print(f"  {'ok  ' if passed else 'FAIL'} {name}: {detail}")
    five_hundreds = total.get("500", 0)
    print(f"\n== target: zero 500s ({five_hundreds}), recovery <= 5 s after each fault (worst {worst:.1f} s), "
          f"every invariant ({'all hold' if all(p for _, p, _ in results) else 'NOT all'})")
    if journal.notes:
        print("\n== notes")
        for note in journal.notes[-40:]:
            print("  " + note)
    return five_hundreds == 0 and all(p for _, p, _ in results) and drained_in is not None


if __name__ == "__main__":
    sys.exit(main())

"""Tamper-evident records: deliveries (Open API, portal, storefront payment, review approval, direct top-up),
money-moving audit entries and risk decisions are hash-chained; `flask kameng chain verify` exits 0 when intact and
1 naming the first altered or missing record; /trust/ publishes the day's head and finds the record hash the
buyer's lookup shows. The chain is recomputed here independently of app.chain. Every test ends with the ledger
check (`app` fixture)."""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.orm import Session

from app.audit.models import AuditEntry
from app.chain import service as chain
from app.chain.models import ChainHead, ChainRecord
from app.clock import to_local, utcnow
from app.extensions import db
from app.orders import service as orders
from app.orders.models import Order
from app.risk import lists
from app.risk.models import RiskDecision
from tests import payments_helpers as h
from tests import supplier_sim_helpers
from tests.openapi_helpers import api_client, new_key, served, signed_call
from tests.recharge_helpers import place_api
from tests.recharge_helpers import world as direct_world
from tests.supplier_sim_helpers import sim_supplier

supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture
BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
GENESIS = "0" * 64


# --- helpers -------------------------------------------------------------------------------------------------

def cli(app, *args: str):
    result = app.test_cli_runner().invoke(args=["kameng", "chain", *args])
    db.session.rollback()
    return result


def verify(app):
    return cli(app, "verify")


def records() -> list[ChainRecord]:
    db.session.rollback()
    return list(db.session.scalars(select(ChainRecord).order_by(ChainRecord.seq)))


def recompute(rows: list[ChainRecord]) -> str:
    """The chain written out from DESIGN.md independently of app.chain: seq 1, 2, ... each hash over the previous
    hash, the content digest, kind, key and seq. Returns the head."""
    prev = GENESIS
    for expected, r in enumerate(rows, 1):
        assert r.seq == expected, (r.seq, expected)
        prev_hash = hashlib.sha256(f"{prev}\n{r.content_digest}\n{r.kind}\n{r.source_key}\n{r.seq}".encode())
        assert r.hash == prev_hash.hexdigest(), r.seq
        prev = r.hash
    return prev


def kinds_of(rows) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r.kind, set()).add(r.source_key)
    return out


def api_order(client, agent_key, secret, product, **extra) -> dict:
    body = {"out_trade_no": uuid.uuid4().hex, "product_id": product.id, "quantity": 1, **extra}
    r = signed_call(client, agent_key, secret, "POST", "/open/v1/orders", body)
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def storefront_order(client, product, contact: str = "138 0013 8000", password: str = "pass-1234") -> dict:
    """Checkout on the storefront API and pay it with a signed sandbox notification."""
    r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": contact,
                                              "query_password": password, "channel": "sandbox"})
    assert r.status_code == 201, r.get_data(as_text=True)
    body = r.get_json()
    paid = client.post("/pay/notify/sandbox", data=h.sandbox_form(body["order_no"], h.trade_no("SBX"),
                                                                   body["amount"]))
    assert paid.get_data(as_text=True) == "success"
    return body


@pytest.fixture
def world(f):
    tier = f.tier(discount_bp=9000)
    agent = f.agent(balance=100_000, tier_obj=tier)
    product = f.product(face_price=10_000, cost=8_000, secrets=10)
    key, secret = new_key(agent)
    h.setup_sandbox()
    return type("World", (), {"agent": agent, "product": product, "key": key, "secret": secret})


# --- every path to delivered, audit and risk ------------------------------------------------------------------

def test_every_delivery_path_money_audit_and_risk_decision_is_chained(app, client, f, world, supplier_sim):
    # given an admin and a direct product served by the upstream simulator
    admin = f.user(f.unique("admin"), role="Admin")
    staff = f.login(app.test_client(), admin.username)
    dw = direct_world(f)
    sim_supplier(supplier_sim, priority=1, mappings={dw.product.id: ("CMCC-10", 900)})

    # when orders are delivered through each entry point
    api_no = api_order(client, world.key, world.secret, world.product)["order_no"]  # Open API wallet purchase
    portal = f.login(app.test_client(), world.agent.user.username)  # portal wallet purchase
    r = portal.post("/portal/buy", data={"product_id": world.product.id, "quantity": "1"}, follow_redirects=True)
    assert r.status_code == 200, r.status_code
    shop_no = storefront_order(client, world.product)["order_no"]  # storefront + channel notification
    lists.add("agent", world.agent.name, "review")  # held for review, approved with the CLI
    held = api_order(client, world.key, world.secret, world.product)
    assert held["status"] == "reviewing"
    approved = app.test_cli_runner().invoke(args=["kameng", "risk", "review", "approve", held["order_no"]])
    assert approved.exit_code == 0, approved.output
    direct_no = place_api(client, dw)["order_no"]  # direct top-up: runs inline after the answer (no Redis)
    # and money moves by hand (balance adjustment, audited)
    r = staff.post("/wallet-adjust/form", data={"agent": world.agent.id, "amount": "12.50", "reason": "活动返现"},
                   follow_redirects=True)
    assert r.status_code == 200
    db.session.rollback()
    delivered = set(db.session.scalars(select(Order.order_no).where(Order.status == "delivered")))
    assert {api_no, shop_no, held["order_no"], direct_no} <= delivered and len(delivered) == 5

    # then verify seals and finds the chain intact
    result = verify(app)
    assert result.exit_code == 0, result.output
    rows = records()
    assert f"chain ok: {len(rows)} record(s) checked" in result.output
    head = recompute(rows)
    assert f"hash {head}" in result.output
    chained = kinds_of(rows)
    assert chained["delivery"] == delivered
    money = {str(i) for i in db.session.scalars(select(AuditEntry.id).where(
        AuditEntry.action.in_(["wallet.adjust", "risk.review.approve"])))}
    assert len(money) == 2 and chained["audit"] == money
    other = {str(i) for i in db.session.scalars(select(AuditEntry.id).where(
        AuditEntry.action.not_in(chain.MONEY_ACTIONS)))}
    assert other and not other & chained["audit"]  # e.g. the risk list entry added: not money
    assert chained["risk_decision"] == {str(i) for i in db.session.scalars(select(RiskDecision.id))}
    assert len(chained["risk_decision"]) >= 5
    # the storefront buyer is in the record as a keyed hash of the normalised contact, never the contact
    digest = next(r.content_digest for r in rows if r.source_key == shop_no)
    order = db.session.scalar(select(Order).where(Order.order_no == shop_no))
    secrets = sorted(s.secret_hash for s in order.card_secrets)
    content = {"order_no": shop_no, "amount": order.amount, "product_id": order.product_id,
               "buyer": {"contact": chain.contact_hash("+8613800138000")}, "card_secrets": secrets,
               "delivered_at": order.delivered_at.isoformat(timespec="microseconds")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == digest
    assert "13800138000" not in canonical
    # the day's head is the chain's
    today = db.session.get(ChainHead, to_local(utcnow()).date())
    assert (today.last_seq, today.head_hash) == (len(rows), head)


# --- tampering -----------------------------------------------------------------------------------------------

@BOTH
def test_verify_names_an_order_whose_amount_was_changed(app, client, world):
    numbers = [api_order(client, world.key, world.secret, world.product)["order_no"] for _ in range(3)]
    assert verify(app).exit_code == 0
    target = numbers[1]

    db.session.execute(text("UPDATE orders SET amount = amount + 1 WHERE order_no = :no"), {"no": target})
    db.session.commit()
    result = verify(app)
    assert result.exit_code == 1
    seq = db.session.scalar(select(ChainRecord.seq).where(ChainRecord.source_key == target))
    first = result.output.splitlines()[0]
    assert target in first and "altered" in first and f"seq {seq}" in first, result.output
    assert numbers[0] not in result.output and numbers[2] not in result.output

    # put back as it was: the content is what is checked, so the chain is whole again
    db.session.execute(text("UPDATE orders SET amount = amount - 1 WHERE order_no = :no"), {"no": target})
    db.session.commit()
    assert verify(app).exit_code == 0


def test_verify_names_other_changes_to_a_delivery(app, client, world):
    number = api_order(client, world.key, world.secret, world.product)["order_no"]
    assert verify(app).exit_code == 0
    order_id = db.session.scalar(select(Order.id).where(Order.order_no == number))
    for change, undo in [
        ("UPDATE orders SET delivered_at = delivered_at + interval '1 second' WHERE id = :id",
         "UPDATE orders SET delivered_at = delivered_at - interval '1 second' WHERE id = :id"),
        ("UPDATE orders SET agent_id = NULL WHERE id = :id", None),
    ]:
        agent_id = db.session.scalar(select(Order.agent_id).where(Order.id == order_id))
        db.session.execute(text(change), {"id": order_id})
        db.session.commit()
        result = verify(app)
        assert result.exit_code == 1 and number in result.output.splitlines()[0], (change, result.output)
        if undo:
            db.session.execute(text(undo), {"id": order_id})
        else:
            db.session.execute(text("UPDATE orders SET agent_id = :a WHERE id = :id"), {"a": agent_id, "id": order_id})
        db.session.commit()
        assert verify(app).exit_code == 0, change


def test_verify_sees_a_delivered_card_secret_swapped_for_another(app, client, world):
    """The secret the buyer is shown is its ciphertext: swapping it for a spare card's (the stored hash column left
    as it was) is an edit of the delivery."""
    number = api_order(client, world.key, world.secret, world.product)["order_no"]
    assert verify(app).exit_code == 0
    order_id = db.session.scalar(select(Order.id).where(Order.order_no == number))
    sold = db.session.execute(text("SELECT id, secret_enc FROM card_secret WHERE order_id = :id"),
                              {"id": order_id}).one()
    spare = db.session.execute(text("SELECT id, secret_enc FROM card_secret WHERE order_id IS NULL "
                                    "AND product_id = :p ORDER BY id LIMIT 1"), {"p": world.product.id}).one()
    swap = "UPDATE card_secret SET secret_enc = :enc WHERE id = :id"
    db.session.execute(text(swap), {"enc": spare.secret_enc, "id": sold.id})
    db.session.execute(text(swap), {"enc": sold.secret_enc, "id": spare.id})
    db.session.commit()
    result = verify(app)
    assert result.exit_code == 1 and number in result.output.splitlines()[0] and "altered" in result.output


def test_verify_against_published_heads_sees_a_rewritten_chain(app, client, world):
    """Whoever can write the database can also recompute every digest, hash and head after an edit; a head kept
    outside the database (as /trust/ published it) still tells."""
    numbers = [api_order(client, world.key, world.secret, world.product)["order_no"] for _ in range(2)]
    assert verify(app).exit_code == 0
    day, published = db.session.execute(select(ChainHead.day, ChainHead.head_hash)).one()
    expect = f"--expect-head={day.isoformat()}={published}"
    assert cli(app, "verify", expect).exit_code == 0

    # the attacker edits an amount and rewrites the chain from that record on, heads included
    db.session.execute(text("UPDATE orders SET amount = amount + 5000 WHERE order_no = :no"), {"no": numbers[0]})
    db.session.commit()
    prev = chain.GENESIS
    for row in records():
        if row.kind == "delivery":
            row.content_digest = chain._current_digests("delivery", [row.source_key])[row.source_key]
        row.hash = prev = chain.link_hash(prev, row.content_digest, row.kind, row.source_key, row.seq)
    db.session.execute(update(ChainHead).values(head_hash=prev))
    db.session.commit()
    assert verify(app).exit_code == 0  # self-consistent again: only an outside copy of a head can tell

    result = cli(app, "verify", expect)
    assert result.exit_code == 1 and "not " + published in result.output.splitlines()[0], result.output
    assert cli(app, "verify", "--expect-head=yesterday=abc").exit_code != 0  # a typo is a clear CLI error


@BOTH
def test_verify_names_a_deleted_chain_record(app, client, world):
    for _ in range(3):
        api_order(client, world.key, world.secret, world.product)
    assert verify(app).exit_code == 0
    rows = records()
    assert len(rows) >= 6  # three deliveries, three risk decisions
    seq, key = rows[2].seq, rows[2].source_key

    db.session.execute(text("DELETE FROM chain_record WHERE seq = :s"), {"s": seq})
    db.session.commit()
    result = verify(app)
    assert result.exit_code == 1
    first = result.output.splitlines()[0]
    assert f"seq {seq} deleted" in first, result.output
    # the record it was about is named too: it is no longer in the chain
    assert f"{key} has no chain record" in result.output


def test_verify_names_a_deleted_last_record_and_an_altered_chain_row(app, client, world):
    api_order(client, world.key, world.secret, world.product)
    assert verify(app).exit_code == 0
    last = records()[-1]
    last_seq, last_key = last.seq, last.source_key
    db.session.execute(text("UPDATE chain_record SET content_digest = :d WHERE seq = 1"), {"d": "0" * 64})
    db.session.commit()
    result = verify(app)
    assert result.exit_code == 1 and "seq 1" in result.output.splitlines()[0] and "altered" in result.output
    db.session.execute(text("DELETE FROM chain_record"))
    db.session.commit()
    result = verify(app)
    assert result.exit_code == 1
    assert f"names seq {last_seq}, which is not in the chain" in result.output  # the day's head
    assert f"{last_key} has no chain record" in result.output


def test_verify_names_a_deleted_audit_entry_and_a_deleted_risk_decision(app, client, world):
    lists.add("agent", world.agent.name, "review")
    held = api_order(client, world.key, world.secret, world.product)
    approved = app.test_cli_runner().invoke(args=["kameng", "risk", "review", "approve", held["order_no"]])
    assert approved.exit_code == 0, approved.output
    assert verify(app).exit_code == 0
    entry_id = db.session.scalar(select(AuditEntry.id).where(AuditEntry.action == "risk.review.approve"))
    decision_id = db.session.scalar(select(Order.risk_decision_id).where(Order.order_no == held["order_no"]))
    seq = {r.source_key: r.seq for r in records() if r.kind in ("audit", "risk_decision")}

    db.session.execute(text("DELETE FROM audit_entry WHERE id = :i"), {"i": entry_id})
    db.session.commit()
    result = verify(app)
    assert result.exit_code == 1
    assert f"audit entry {entry_id} (seq {seq[str(entry_id)]}) was deleted" in result.output.splitlines()[0]

    db.session.execute(text("DELETE FROM risk_decision WHERE id = :i"), {"i": decision_id})
    db.session.commit()
    result = verify(app)
    assert result.exit_code == 1
    assert f"risk decision {decision_id} (seq {seq[str(decision_id)]}) was deleted" in result.output


# --- /trust/ and the lookup ----------------------------------------------------------------------------------

def test_lookup_shows_the_record_hash_that_trust_finds_under_the_days_head(app, client, world):
    body = storefront_order(client, world.product, contact="buyer@example.com", password="pass-1234")
    api_order(client, world.key, world.secret, world.product)

    # the buyer's lookup (JSON) carries the delivery's record hash (sealed on demand) next to its usual fields
    r = client.post("/shop/api/lookup", json={"order_no": body["order_no"], "query_password": "pass-1234"})
    assert r.status_code == 200
    answer = r.get_json()
    assert answer["status"] == "delivered" and len(answer["card_secrets"]) == 1
    record_hash = answer["record_hash"]
    assert re.fullmatch(r"[0-9a-f]{64}", record_hash)
    assert answer["trust_url"].endswith(f"/trust/record/{record_hash}")
    mine = db.session.scalar(select(ChainRecord).where(ChainRecord.hash == record_hash))
    assert mine.kind == "delivery" and mine.source_key == body["order_no"]
    # and the lookup page links it to /trust/
    page = client.post("/shop/lookup", data={"order_no": body["order_no"], "query_password": "pass-1234"}).text
    assert record_hash in page and f"/trust/record/{record_hash}" in page

    # /trust/ is public and shows today's head, the chain's own
    page = client.get("/trust/")
    assert page.status_code == 200
    head = recompute(records())
    today = to_local(utcnow()).date().isoformat()
    assert re.search(rf'<td class="day">{today}</td>.*?<code class="head-hash">{head}</code>', page.text, re.S)
    result = cli(app, "head")
    assert result.exit_code == 0 and json.loads(result.output)["head_hash"] == head

    # the record hash is found there: its seq and the day's head, nothing about the order or the buyer
    found = client.get(f"/trust/record/{record_hash}")
    assert found.status_code == 200
    assert f'<span id="record-seq">{mine.seq}</span>' in found.text and head in found.text
    assert body["order_no"] not in found.text and "buyer@example.com" not in found.text
    api = client.get(f"/trust/api/record/{record_hash.upper()}").get_json()
    assert api == {"record_hash": record_hash, "in_chain": True, "seq": mine.seq, "kind": "delivery",
                   "day_head": {"day": today, "last_seq": records()[-1].seq, "head_hash": head,
                                "records": len(records())}}
    assert client.get(f"/trust/record?hash={record_hash}").headers["Location"].endswith(f"/trust/record/{record_hash}")
    # unknown and malformed hashes: 404 and 400, never a server error
    assert client.get("/trust/record/" + "ab" * 32).status_code == 404
    assert client.get("/trust/api/record/" + "ab" * 32).get_json()["in_chain"] is False
    assert client.get("/trust/record/not-a-hash").status_code == 400
    assert client.get("/trust/record?hash=%27%3B").status_code == 400
    assert client.get("/trust/api/record/zz").status_code == 400
    heads = client.get("/trust/api/heads").get_json()
    assert heads["head"]["head_hash"] == head and heads["heads"][0]["day"] == today

    # in English too
    import flask_babel

    flask_babel.refresh()
    assert client.get("/lang/en").status_code == 302
    flask_babel.refresh()
    page = client.get("/trust/").text
    assert "Daily chain heads" in page and "每日链头" not in page


def test_an_unpaid_order_has_no_record_hash(app, client, world):
    r = client.post("/shop/api/orders", json={"product_id": world.product.id, "quantity": 1,
                                              "contact": "buyer@example.com", "query_password": "pass-1234",
                                              "channel": "sandbox"})
    number = r.get_json()["order_no"]
    answer = client.post("/shop/api/lookup", json={"order_no": number, "query_password": "pass-1234"}).get_json()
    assert answer["status"] == "pending_payment" and answer["record_hash"] is None


# --- sealing -------------------------------------------------------------------------------------------------

def test_rows_from_before_the_chain_are_appended_by_the_first_seal(app, client, world):
    # given deliveries and decisions whose chain rows do not exist (written before the chain was there)
    numbers = [api_order(client, world.key, world.secret, world.product)["order_no"] for _ in range(2)]
    db.session.execute(text("DELETE FROM chain_record"))
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(ChainHead)) == 0
    # when the periodic job seals for the first time
    from workers import jobs
    from workers.schedule import PERIODIC

    assert any(p.name == "chain-seal" and p.func is jobs.seal_chain for p in PERIODIC)
    assert jobs.seal_chain() == 4
    # then they are chained, in id order per kind, and verify is clean
    rows = records()
    assert [r.kind for r in rows] == ["risk_decision", "risk_decision", "delivery", "delivery"]
    assert [r.source_key for r in rows[2:]] == numbers
    recompute(rows)
    assert verify(app).exit_code == 0
    assert jobs.seal_chain() == 0


def test_a_record_committed_after_higher_ids_is_sealed_not_skipped(app, f, world, pg_url):
    """A delivery whose transaction commits late (its chain row has a lower id than rows sealed meanwhile) gets the
    next seq at the next seal: real threads on PostgreSQL."""
    slow_agent = f.agent(balance=50_000)
    product_id, slow_id = world.product.id, slow_agent.id
    inserted, release = threading.Event(), threading.Event()

    def hold(session):
        if threading.current_thread().name == "slow-buyer":
            inserted.set()
            assert release.wait(30)

    def slow_buyer():
        with app.app_context():
            try:
                orders.place_wallet_order(slow_id, product_id, 1)
            finally:
                db.session.remove()

    event.listen(Session, "before_commit", hold)
    try:
        thread = threading.Thread(target=slow_buyer, name="slow-buyer")
        thread.start()
        assert inserted.wait(30)
        # meanwhile others deliver and the chain is sealed past the slow row's id
        from tests.openapi_helpers import signed_call as call

        client = app.test_client()
        for _ in range(2):
            body = {"out_trade_no": uuid.uuid4().hex, "product_id": product_id, "quantity": 1}
            assert call(client, world.key, world.secret, "POST", "/open/v1/orders", body).status_code == 201
        sealed_before = chain.seal()
        assert sealed_before >= 2
        release.set()
        thread.join(30)
    finally:
        release.set()
        event.remove(Session, "before_commit", hold)
    slow_no = db.session.scalar(select(Order.order_no).where(Order.agent_id == slow_id))
    db.session.rollback()
    late = db.session.scalar(select(ChainRecord).where(ChainRecord.source_key == slow_no))
    assert late.seq is None  # committed after the seal
    assert db.session.scalar(select(func.max(ChainRecord.id)).where(ChainRecord.seq.is_not(None))) > late.id
    chain.seal()
    rows = records()
    recompute(rows)
    assert rows[-1].source_key == slow_no  # the next place, after records with higher ids
    assert verify(app).exit_code == 0


def test_concurrent_deliveries_all_end_up_chained_with_consecutive_seq(app, f):
    """8 agents buying over real HTTP from 8 threads (Open API) while a sealer runs in a loop: every delivery and
    decision chained once, seq 1..N without a gap, verify clean."""
    product_id = f.product(face_price=1_000, cost=800, secrets=48).id
    buyers = []
    for _ in range(8):
        key, secret = new_key(f.agent(balance=20_000))
        buyers.append((type("Key", (), {"app_key": key.app_key}), secret))
    stop = threading.Event()
    sealed: list[int] = []

    def sealer():
        with app.app_context():
            try:
                while not stop.is_set():
                    sealed.append(chain.seal())
                    time.sleep(0.01)
            finally:
                db.session.remove()

    with served(app) as base:
        sealing = threading.Thread(target=sealer)
        sealing.start()

        def buy(index: int):
            key, secret = buyers[index % 8]
            client = api_client(base, key, secret)
            r = client.create_order(uuid.uuid4().hex, product_id, 1)
            assert r.status_code == 201, r.text
            return r.json()

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(buy, range(48)))
        finally:
            stop.set()
            sealing.join(60)
    assert all(a["status"] == "delivered" for a in answers), answers[:3]
    assert sum(sealed) > 0
    result = verify(app)
    assert result.exit_code == 0, result.output
    rows = records()
    recompute(rows)
    chained = kinds_of(rows)
    assert chained["delivery"] == {a["order_no"] for a in answers}
    assert len(chained["risk_decision"]) == 48
    assert len(rows) == 96 and [r.seq for r in rows] == list(range(1, 97))


# --- the CLI -------------------------------------------------------------------------------------------------

def test_chain_head_cli(app, client, world):
    assert cli(app, "head").exit_code == 1  # nothing sealed yet
    api_order(client, world.key, world.secret, world.product)
    result = cli(app, "head")
    assert result.exit_code == 0, result.output
    head = json.loads(result.output)
    assert head["head_hash"] == recompute(records()) and head["last_seq"] == 2
    today = to_local(utcnow()).date()
    assert json.loads(cli(app, "head", "--day", today.isoformat()).output) == head
    assert cli(app, "head", "--day", "2001-01-01").exit_code == 1
    bad = cli(app, "head", "--day", "yesterday")
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output


def test_verify_on_an_empty_database(app):
    result = verify(app)
    assert result.exit_code == 0 and "chain ok: 0 record(s) checked" in result.output


@pytest.mark.postgres_only  # the sealer's advisory lock
def test_openapi_client_buys_are_answered_before_the_seal(app, world):
    """Appending is an insert: a delivery does not wait for the sealer (held here by another transaction)."""
    with db.engine.connect() as holder:
        holder.execute(select(func.pg_advisory_lock(*chain.SEAL_LOCK)))
        try:
            with served(app) as base:
                started = time.monotonic()
                answer = api_client(base, world.key, world.secret).create_order(uuid.uuid4().hex, world.product.id, 1)
                assert answer.json()["status"] == "delivered" and time.monotonic() - started < 10
            assert chain.seal(wait=False) == 0  # a page view does not queue behind the sealer
        finally:
            holder.execute(select(func.pg_advisory_unlock(*chain.SEAL_LOCK)))
            holder.commit()
    assert chain.seal() == 2


def test_the_demo_history_joins_the_chain(app):
    """The demo's bulk-inserted history (written around the live code) is appended right after it is generated."""
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "demo", "--password", "demo-pass-1", "--sandbox-key", "sandbox-key-1",
                                 "--orders", "200", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "appended to the tamper-evident chain" in result.output
    db.session.rollback()
    delivered = db.session.scalar(select(func.count()).select_from(Order).where(Order.delivered_at.is_not(None)))
    assert delivered > 100
    result = verify(app)
    assert result.exit_code == 0, result.output
    assert len(kinds_of(records())["delivery"]) == delivered

"""Risk control through the storefront API and the CLI: lists block and review, the per-order and daily limits,
review holds approved (delivered) and rejected (refunded through the channel), a shadow rule decides nothing,
replay gives the stored outcome, and no personal value sits in plaintext in the risk tables."""
from __future__ import annotations

import json

from sqlalchemy import select, text

from app.risk.models import RiskDecision, RiskRule
from tests import payments_helpers as h

PHONE = "13912345678"


def _checkout(client, product, contact=PHONE, device="dev-1", quantity=1, ip="203.0.113.5"):
    return client.post("/shop/api/orders", json={"product_id": product.id, "quantity": quantity, "contact": contact,
                                                 "query_password": h.PASSWORD, "channel": "sandbox",
                                                 "device_id": device}, environ_base={"REMOTE_ADDR": ip})


def _cli(app, *args):
    result = app.test_cli_runner().invoke(args=["kameng", "risk", *args])
    return result.exit_code, result.output


def test_blacklisted_phone_in_any_spelling_is_refused_and_nothing_is_written(app, f, client):
    h.setup_sandbox()
    product = f.product(secrets=2)
    code, out = _cli(app, "list", "add", "--kind", "phone", "--value", "139 1234 5678", "--action", "block",
                     "--reason", "stolen cards")
    assert code == 0
    entry = json.loads(out)
    assert entry["kind"] == "phone" and "1234" not in entry["value"] and entry["action"] == "block"
    r = _checkout(client, product, contact="+86 139-1234-5678")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "risk_blocked"
    assert h.count(h.Order) == 0
    [decision] = h.db.session.scalars(select(RiskDecision))
    assert decision.outcome == "block" and decision.stage == "list"
    # removed: the next checkout passes
    assert _cli(app, "list", "remove", str(entry["id"]))[0] == 0
    assert _checkout(client, product, contact=PHONE).status_code == 201


def test_watchlisted_device_is_held_after_payment_then_approved_or_rejected(app, f, client):
    h.setup_sandbox()
    product = f.product(secrets=3)
    assert _cli(app, "list", "add", "--kind", "device", "--value", "dev-watch", "--action", "review")[0] == 0
    held = [_checkout(client, product, device="dev-watch").get_json()["order_no"] for _ in range(2)]
    for number in held:
        order = h.db.session.scalar(select(h.Order).where(h.Order.order_no == number))
        h.notify(client, "sandbox", order, "SBX-" + number)
        assert h.order_state(number) == "reviewing"
        lookup = client.post("/shop/api/lookup", json={"order_no": number, "query_password": h.PASSWORD})
        assert lookup.get_json()["status"] == "reviewing" and lookup.get_json()["card_secrets"] == []
    assert _cli(app, "review", "approve", held[0]) == (0, json.dumps({"order_no": held[0], "status": "delivered"})
                                                       + "\n")
    code, out = _cli(app, "review", "reject", held[1], "--reason", "设备可疑")
    assert code == 0 and json.loads(out)["status"] == "refunded"
    h.db.session.rollback()
    from app.payments.models import Refund

    [refund] = h.db.session.scalars(select(Refund))
    assert refund.destination == "sandbox" and refund.reason.startswith("风控拒绝")
    assert h.channel_answers_refund(refund) == "succeeded"
    # not under review any more: the CLI says so and exits non-zero
    code, out = _cli(app, "review", "approve", held[1])
    assert code != 0 and "不在风控审核中" in out
    assert _cli(app, "review", "reject", "999999", "--reason", "x")[0] != 0


def test_order_and_daily_limits(app, f, client):
    h.setup_sandbox()
    big = f.product(face_price=600_000, cost=500_000, secrets=1)
    r = _checkout(client, big)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "risk_limit"
    product = f.product(face_price=450_000, cost=400_000, secrets=10)
    for _ in range(4):  # ¥18,000 today
        assert _checkout(client, product).status_code == 201
    r = _checkout(client, product)  # would be ¥22,500
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "risk_limit"
    # the same buyer on another device is the same contact; another contact on that device is the same device
    assert _checkout(client, product, device="dev-2").status_code == 403
    assert _checkout(client, product, contact="13700000000").status_code == 403
    assert _checkout(client, product, contact="13700000000", device="dev-3").status_code == 201


def test_shadow_rule_decides_nothing_and_replay_gives_the_stored_outcome(app, f, client):
    from app.risk.default_rules import version_of

    h.setup_sandbox()
    product = f.product(secrets=3)
    for status, name in (("shadow", "everything_shadow"), ("active", "big_amounts")):
        rule = RiskRule(name=name, events="checkout", expression="amount >= 100", action="review",
                        reason=name, status=status, version=1)
        h.db.session.add(rule)
        h.db.session.flush()
        h.db.session.add(version_of(rule))
    h.db.session.commit()
    from app.risk.service import replay

    h.db.session.execute(select(RiskRule))
    rule = h.db.session.scalar(select(RiskRule).where(RiskRule.name == "big_amounts"))
    rule.status = "draft"
    h.db.session.commit()  # seen at once: the rule table's trigger moved the cache version
    assert _checkout(client, product).status_code == 201
    decision = h.db.session.scalar(select(RiskDecision).order_by(RiskDecision.id.desc()))
    hits = json.loads(decision.hits)
    assert decision.outcome == "allow" and [x["name"] for x in hits] == ["everything_shadow"] and hits[0]["shadow"]
    assert replay(decision.id) == "allow"


def test_no_personal_value_in_plaintext_in_the_risk_tables(app, f, client, db):
    h.setup_sandbox()
    product = f.product(secrets=2)
    _cli(app, "list", "add", "--kind", "contact", "--value", "buyer@example.com", "--action", "review")
    _cli(app, "list", "add", "--kind", "id_number", "--value", "11010519491231002X", "--action", "block")
    assert _checkout(client, product, contact=PHONE, device="dev-pii").status_code == 201
    dump = ""
    for table in ("risk_list_entry", "risk_decision", "risk_event"):
        dump += json.dumps([list(map(str, row)) for row in db.session.execute(text(f"SELECT * FROM {table}"))])
    for secret in (PHONE, "+8613912345678", "buyer@example.com", "11010519491231002X", "203.0.113.5"):
        assert secret not in dump, secret


def test_paying_account_on_the_watchlist_holds_the_order_and_failed_payments_are_counted(app, f, client):
    from app.risk.counters import read
    from app.risk.features import COUNTERS
    from app.risk.identity import digest

    h.setup_all()
    product = f.product(secrets=2)
    assert _cli(app, "list", "add", "--kind", "payment_account", "--value", "2088000000000001",
                "--action", "review")[0] == 0
    order = h.guest_order(product, "alipay")  # Alipay's notification names the buyer 2088000000000001
    assert h.notify(client, "alipay", order, h.trade_no("2024")).get_data(as_text=True) == "success"
    assert h.order_state(order.order_no) == "reviewing"
    h.db.session.rollback()
    stored = h.db.session.scalar(select(h.Order).where(h.Order.order_no == order.order_no))
    assert stored.payment_account_key == digest("payment_account", "2088000000000001")
    # a sandbox payment that failed is counted for the buyer's device
    r = _checkout(client, product, device="dev-fail")
    number = r.get_json()["order_no"]
    failed = h.sandbox_form(number, "SBX-FAIL-1", 10000, status="FAILED")
    assert client.post("/pay/notify/sandbox", data=failed).status_code == 200
    keys = {"device": digest("device", "dev-fail")}
    assert read({"f": COUNTERS["payment_failures_device_1h"]}, keys)["f"] == 1
    assert _cli(app, "review", "reject", order.order_no, "--reason", "payer on the watchlist")[0] == 0
    from app.payments.models import Refund

    h.channel_answers_refund(h.db.session.scalar(select(Refund)))


def test_redis_amount_windows_equal_the_record_at_every_edge_without_reading_every_event(app, redis_url, monkeypatch):
    """Amounts over a window come from per-bucket totals plus the events of the bucket the window starts in: the
    same sums as PostgreSQL's record, to the second, without reading the day's events back."""
    import random
    from datetime import timedelta

    from app.clock import utcnow
    from app.extensions import db
    from app.risk import counters
    from app.risk.counters import AMOUNT_BUCKET_SECONDS, Query

    monkeypatch.setitem(app.config, "REDIS_URL", redis_url)
    rng = random.Random(7)
    now = utcnow().replace(microsecond=0)
    keys = {"agent": "agent-key-under-test", "contact": "contact-key-under-test"}
    for _ in range(400):
        at = now - timedelta(seconds=rng.randrange(0, 26 * 3600))
        counters.record("order", keys, amount=rng.randrange(1, 50_000), at=at)
    db.session.commit()
    queries = {"amount_agent_24h": Query("order", "agent", 24 * 3600, "amount"),
               "amount_contact_1h": Query("order", "contact", 3600, "amount"),
               "orders_agent_24h": Query("order", "agent", 24 * 3600),
               "contacts_agent_1h": Query("order", "agent", 3600, "distinct", other="contact")}
    conn = counters._redis()
    for shift in (0, 1, 59, AMOUNT_BUCKET_SECONDS - 1, AMOUNT_BUCKET_SECONDS, 3 * 3600 + 17):
        at = now + timedelta(seconds=shift)
        assert counters._redis_read(conn, queries, keys, at) == counters._pg_read_all(queries, keys, at), shift
    # The amounts come from the bucket totals: with the events inside the windows' whole buckets gone from the
    # sorted sets (the totals kept), the sums stay the same; a sum over the events would lose them.
    before = counters._redis_read(conn, queries, keys, now)
    middle = (now.timestamp() - 23 * 3600, now.timestamp() - 2 * 3600)
    removed = sum(conn.zremrangebyscore(counters._zkey("order", d, k), *middle) for d, k in keys.items())
    assert removed > 500  # about 320 of each identifier's 400 events
    after = counters._redis_read(conn, queries, keys, now)
    assert after["amount_agent_24h"] == before["amount_agent_24h"]
    assert after["amount_contact_1h"] == before["amount_contact_1h"]
    assert after["orders_agent_24h"] < before["orders_agent_24h"]  # a count reads the events themselves


def test_a_fresh_worker_compiles_the_live_rules_before_its_first_decision(app, f):
    """gunicorn's post_worker_init calls warm_up: the active and shadow rules are compiled before any buyer waits on
    them, a draft is not, and a rule that does not compile is passed over (as fired_rules does) without failing."""
    from app.risk import rules
    from app.risk.service import warm_up

    for status, name, expression in (("active", "warm_active", "amount >= 12345"),
                                     ("shadow", "warm_shadow", "quantity > 7"),
                                     ("draft", "warm_draft", "amount >= 54321"),
                                     ("active", "warm_broken", "amount >= ")):
        h.db.session.add(RiskRule(name=name, events="checkout", expression=expression, action="review",
                                  reason=name, status=status, version=1))
    h.db.session.commit()
    rules._COMPILED.clear()
    with app.app_context():
        answer = warm_up()
    assert "amount >= 12345" in rules._COMPILED and "quantity > 7" in rules._COMPILED
    assert "amount >= 54321" not in rules._COMPILED and "amount >= " not in rules._COMPILED
    assert answer.endswith("0 models")

"""Alerts (告警) against local receivers over real HTTP on 127.0.0.1: the DingTalk, WeCom and Feishu robot simulator
(which verifies the signatures and timestamps, enforces the robots' limits and records what it accepted) and a real
SMTP server (aiosmtpd) for e-mail.

Each rule reads the rows its domain already keeps (restock alerts, supplier balance alerts, top-up attempts, orders,
payment notifications, reconciliations, refunds, RQ's failed jobs, risk decisions); an alert is told once while it
stays open and once more when it recovers; messages leave from a job (the outbox), never carry a secret or personal
data, and respect each robot's rate limit. The ledger check runs after every test (the `app` fixture)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from sqlalchemy import select, text, update

from app.alerts import robots as robot_protocol
from app.alerts import service as alerts
from app.alerts.models import Alert, AlertChannel, AlertDelivery, AlertRule
from app.audit.models import AuditEntry
from app.catalog import cards
from app.clock import utcnow
from app.extensions import db
from app.outbox.models import OutboxMessage
from tests import alert_helpers as ah
from tests import mail_helpers as mh

robots = ah.robots
smtp = mh.smtp


def alerts_of(rule: str | None = None) -> list[Alert]:
    db.session.rollback()
    query = select(Alert).order_by(Alert.id)
    if rule:
        query = query.where(Alert.rule == rule)
    return db.session.scalars(query).all()


def deliveries() -> list[AlertDelivery]:
    db.session.rollback()
    return db.session.scalars(select(AlertDelivery).order_by(AlertDelivery.id)).all()


def text_of(message: dict) -> str:
    body = message["body"]
    if message["kind"] == "feishu":
        post = body["content"]["post"]["zh_cn"]
        return post["title"] + "\n" + "\n".join(part["text"] for para in post["content"] for part in para)
    return body["text"]["content"]


def low_stock_product(f, name="腾讯Q币 10元", available=2, threshold=5):
    product = f.product(name=name, low_stock_threshold=threshold)
    if available:
        f.stock(product, available)
    cards.scan_low_stock()
    return product


# --- signatures, per robot ---------------------------------------------------------------------------------------

def test_dingtalk_signature_is_ms_timestamp_and_urlencoded_base64_hmac(app):
    secret = "SEC" + "ab12" * 12
    url, body = robot_protocol.build_request("dingtalk", "https://oapi.dingtalk.com/robot/send?access_token=T1",
                                             secret, robot_protocol.Message("t", ["l"]), now=1_700_000_000.123)
    query = parse_qs(urlsplit(url).query)
    assert query["access_token"] == ["T1"] and query["timestamp"] == ["1700000000123"]  # milliseconds
    expected = base64.b64encode(hmac.new(secret.encode(), f"1700000000123\n{secret}".encode(),
                                         hashlib.sha256).digest()).decode()
    assert query["sign"] == [expected]
    assert "sign=" + quote(expected, safe="") in url  # URL-encoded once in the query string
    assert json.loads(body)["msgtype"] == "text"


def test_feishu_signature_is_seconds_and_hmac_keyed_by_the_string_to_sign(app):
    url, body = robot_protocol.build_request("feishu", "https://open.feishu.cn/open-apis/bot/v2/hook/T2", "s3cr3t",
                                             robot_protocol.Message("t", ["l"]), now=1_700_000_000.9)
    data = json.loads(body)
    assert data["timestamp"] == "1700000000"  # seconds
    expected = base64.b64encode(hmac.new(b"1700000000\ns3cr3t", b"", hashlib.sha256).digest()).decode()
    assert data["sign"] == expected and url.endswith("/hook/T2") and data["msg_type"] == "post"


@pytest.mark.parametrize("kind", ["dingtalk", "feishu"])
def test_a_signed_robot_accepts_our_message_and_the_alert_is_told_once(app, f, robots, kind):
    channel, robot = ah.robot_channel(robots, kind, signed=True)
    low_stock_product(f)
    # when the rules are evaluated three times while the stock stays low
    for _ in range(3):
        ah.evaluate(kinds=["low_stock"])
    # then one alert, told once; the receiver verified the signature and timestamp and accepted it
    [alert] = alerts_of("low_stock")
    assert (alert.status, alert.occurrences) == ("open", 3)
    [message] = robots.messages(kind)
    assert [r["code"] for r in robots.requests()] == [0]
    assert "腾讯Q币 10元" in text_of(message) and "【告警】" in text_of(message)
    [delivery] = deliveries()
    assert (delivery.status, delivery.attempts, delivery.event) == ("sent", 1, "raised")


def test_wecom_is_unsigned_and_an_unknown_key_fails_at_once(app, f, robots):
    good, _ = ah.robot_channel(robots, "wecom", signed=False)
    bad = alerts.create_channel("wecom-gone", "wecom", webhook=robots.url + "/cgi-bin/webhook/send?key=nope",
                                min_severity="info")
    low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    [message] = robots.messages("wecom")
    assert message["body"]["msgtype"] == "text" and "补货提醒" in message["body"]["text"]["content"]
    by_channel = {d.channel_id: d for d in deliveries()}
    assert by_channel[good.id].status == "sent"
    failed = by_channel[bad.id]
    assert failed.status == "failed" and failed.attempts == 1 and "93000" in failed.last_error
    assert sorted(r["code"] for r in robots.requests()) == [0, 93000]


@pytest.mark.parametrize("kind,code", [("dingtalk", 310000), ("feishu", 19021)])
def test_a_wrong_secret_is_refused_by_the_robot_and_not_retried(app, f, robots, kind, code):
    channel, _ = ah.robot_channel(robots, kind, secret="SECnot-the-robots-secret")
    low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    [delivery] = deliveries()
    assert delivery.status == "failed" and str(code) in delivery.last_error and delivery.next_attempt_at is None
    assert robots.messages() == [] and [r["code"] for r in robots.requests()] == [code]
    assert str(code) in db.session.get(AlertChannel, channel.id).last_error


@pytest.mark.parametrize("kind,code", [("dingtalk", 310000), ("feishu", 19021)])
def test_a_clock_more_than_an_hour_off_is_refused_and_within_the_hour_accepted(app, f, robots, kind, code):
    ah.robot_channel(robots, kind)
    app.config["ALERT_RETRY_SECONDS"] = "0"
    try:
        robots.behave(skew_seconds=3700)  # the robot's clock an hour and 100 s ahead of ours
        low_stock_product(f, name="A")
        ah.evaluate(kinds=["low_stock"])
        assert deliveries()[0].status == "failed" and str(code) in deliveries()[0].last_error
        robots.behave(skew_seconds=-3500)  # 58 minutes behind: still within the hour
        low_stock_product(f, name="B")
        ah.evaluate(kinds=["low_stock"])
        assert deliveries()[1].status == "sent"
        assert [r["code"] for r in robots.requests()] == [code, 0]
    finally:
        app.config["ALERT_RETRY_SECONDS"] = "30,120,600,1800,7200"


# --- de-duplication and recovery ---------------------------------------------------------------------------------

@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)  # make run's default is SQLite
def test_recovery_is_told_once_and_a_new_episode_is_a_new_alert(app, f, robots):
    ding, _ = ah.robot_channel(robots, "dingtalk")
    feishu, _ = ah.robot_channel(robots, "feishu")
    product = low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    # when the product is restocked
    f.stock(product, 10)
    cards.scan_low_stock()
    ah.evaluate(kinds=["low_stock"])
    ah.evaluate(kinds=["low_stock"])
    # then the alert is resolved and each channel that was told got one recovery message
    [alert] = alerts_of("low_stock")
    assert alert.status == "resolved" and alert.open_key is None and alert.resolved_at is not None
    texts = [text_of(m) for m in robots.messages()]
    assert len(texts) == 4 and sum("【恢复】" in t for t in texts) == 2 and sum("【告警】" in t for t in texts) == 2
    assert all("持续" in t for t in texts if "【恢复】" in t)
    # when it runs low again: a second alert (the log keeps both), told again
    # (raising the threshold above the stock, as selling it down would)
    db.session.execute(update(type(product)).where(type(product).id == product.id).values(low_stock_threshold=50))
    db.session.commit()
    cards.scan_low_stock()
    ah.evaluate(kinds=["low_stock"])
    first, second = alerts_of("low_stock")
    assert (first.status, second.status, second.key) == ("resolved", "open", first.key)
    assert len(robots.messages()) == 6
    assert [(d.alert_id, d.channel_id, d.event) for d in deliveries()] == [
        (first.id, ding.id, "raised"), (first.id, feishu.id, "raised"),
        (first.id, ding.id, "resolved"), (first.id, feishu.id, "resolved"),
        (second.id, ding.id, "raised"), (second.id, feishu.id, "raised")]


def test_raise_and_resolve_are_idempotent(app):
    alert, opened = alerts.raise_alert("job_failed:low:x", "job_failed", "warning", {"queue": "low", "count": 1})
    again, opened_again = alerts.raise_alert("job_failed:low:x", "job_failed", "warning", {"queue": "low", "count": 2})
    db.session.commit()
    assert opened and not opened_again and again.id == alert.id and again.occurrences == 2
    assert alerts.resolve("job_failed:low:x") is not None and alerts.resolve("job_failed:low:x") is None
    db.session.commit()
    assert len(alerts_of()) == 1


def test_two_sessions_raising_one_key_open_one_alert(app, pg_url):
    """The unique open_key settles two evaluations at once: the second insert fails and updates the first."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    alerts.raise_alert("delivery_sla", "delivery_sla", "warning", {"count": 1, "minutes": 15, "orders": []})
    db.session.flush()  # our transaction holds the new open_key row, uncommitted
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as other:
            other.execute(text("SET lock_timeout = '2s'"))
            with pytest.raises(Exception):  # noqa: B017 - blocked by our uncommitted row, then times out
                other.execute(text("INSERT INTO alert (key, open_key, rule, severity, status, facts, summary, "
                                   "occurrences, opened_at, last_seen_at) VALUES ('delivery_sla', 'delivery_sla', "
                                   "'delivery_sla', 'warning', 'open', '{}', 'x', 1, now(), now())"))
        db.session.commit()
        with Session(engine) as other, pytest.raises(Exception):  # noqa: B017 - committed: a unique violation
            other.execute(text("INSERT INTO alert (key, open_key, rule, severity, status, facts, summary, "
                               "occurrences, opened_at, last_seen_at) VALUES ('delivery_sla', 'delivery_sla', "
                               "'delivery_sla', 'warning', 'open', '{}', 'x', 1, now(), now())"))
    finally:
        engine.dispose()
    assert len(alerts_of()) == 1


def test_a_channel_only_gets_alerts_at_its_minimum_severity(app, f, robots):
    ah.robot_channel(robots, "dingtalk", min_severity="critical")
    low_stock_product(f)  # low stock is a warning by default
    ah.evaluate(kinds=["low_stock"])
    assert alerts_of("low_stock") and robots.messages() == [] and deliveries() == []


def test_a_disabled_rule_resolves_its_open_alerts(app, f, robots):
    ah.robot_channel(robots, "feishu")
    low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    db.session.execute(update(AlertRule).where(AlertRule.kind == "low_stock").values(enabled=False))
    db.session.commit()
    ah.evaluate(kinds=["low_stock"])
    assert [a.status for a in alerts_of("low_stock")] == ["resolved"]
    assert [d.event for d in deliveries()] == ["raised", "resolved"]


# --- limits, retries ---------------------------------------------------------------------------------------------

def test_dingtalk_gets_at_most_20_a_minute_and_the_rest_waits_its_turn(app, f, robots):
    ah.robot_channel(robots, "dingtalk")
    for n in range(25):
        low_stock_product(f, name=f"点卡{n:02d}")
    ah.evaluate(kinds=["low_stock"])
    # then 20 left at once, 5 wait for the minute to pass; the robot never had to refuse anything
    statuses = [d.status for d in deliveries()]
    assert statuses.count("sent") == 20 and statuses.count("queued") == 5
    assert len(robots.messages()) == 20 and {r["code"] for r in robots.requests()} == {0}
    waiting = [d for d in deliveries() if d.status == "queued"]
    assert all(timedelta(seconds=50) < d.next_attempt_at - utcnow() <= timedelta(seconds=61) for d in waiting)
    assert all(d.attempts == 0 for d in waiting)
    # when a minute has passed (our requests' times moved back, the robot's clock forward) the sweeper sends the rest
    robots.behave(skew_seconds=61)
    db.session.execute(update(AlertDelivery).where(AlertDelivery.attempted_at.is_not(None))
                       .values(attempted_at=AlertDelivery.attempted_at - timedelta(seconds=61)))
    db.session.execute(update(AlertDelivery).where(AlertDelivery.status == "queued").values(next_attempt_at=utcnow()))
    db.session.execute(update(OutboxMessage).where(OutboxMessage.status == "pending").values(next_attempt_at=utcnow()))
    db.session.commit()
    ah.sweep()
    assert [d.status for d in deliveries()].count("sent") == 25, [(d.status, d.last_error) for d in deliveries()]
    assert len(robots.messages()) == 25
    assert {r["code"] for r in robots.requests()} == {0}


def test_feishu_gets_at_most_5_a_second(app, f, robots):
    ah.robot_channel(robots, "feishu")
    for n in range(7):
        low_stock_product(f, name=f"会员{n}")
    ah.evaluate(kinds=["low_stock"])
    assert len(robots.messages()) == 5
    time.sleep(1.2)
    ah.sweep()
    assert len(robots.messages()) == 7 and {r["code"] for r in robots.requests()} == {0}


def test_a_robot_saying_too_fast_is_asked_again_when_it_allows(app, f, robots):
    ah.robot_channel(robots, "dingtalk")
    robots.behave(fail=130101, fail_times=1)
    low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    [delivery] = deliveries()
    assert delivery.status == "queued" and delivery.attempts == 0 and "130101" in delivery.last_error
    assert timedelta(minutes=9) < delivery.next_attempt_at - utcnow() <= timedelta(minutes=10)


def test_a_receiver_that_is_down_is_retried_then_given_up_and_resent_by_an_admin(app, f, robots):
    app.config["ALERT_RETRY_SECONDS"] = "0,0"
    try:
        ah.robot_channel(robots, "wecom", signed=False)
        robots.behave(http_status=503)
        low_stock_product(f)
        ah.evaluate(kinds=["low_stock"])
        for _ in range(3):
            ah.sweep()
        [delivery] = deliveries()
        assert (delivery.status, delivery.attempts) == ("failed", 3) and "HTTP 503" in delivery.last_error
        # when the receiver is back and an admin resends it (audited)
        robots.behave(http_status=200)
        alerts.resend(delivery.id, actor_id=None)
        ah.sweep()
        [delivery] = deliveries()
        assert delivery.status == "sent" and len(robots.messages()) == 1
        assert db.session.scalar(select(AuditEntry.id).where(AuditEntry.action == "alert_delivery.resend"))
    finally:
        app.config["ALERT_RETRY_SECONDS"] = "30,120,600,1800,7200"


# --- e-mail ------------------------------------------------------------------------------------------------------

def test_email_goes_through_the_platform_smtp_server_to_masked_encrypted_recipients(app, f, smtp):
    channel = alerts.create_channel("运维邮件", "email", recipients="ops@example.com; boss@example.com",
                                    min_severity="info")
    raw = db.session.execute(text("SELECT recipients_enc, recipients_masked FROM alert_channel")).one()
    assert "ops@example.com" not in raw[0] and "ops@example.com" not in raw[1]
    low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    [message] = smtp.wait(1)
    assert message["To"] == "ops@example.com, boss@example.com"
    assert "【卡盟 Kameng】" in message["Subject"] and "补货提醒" in message["Subject"]
    assert "腾讯Q币 10元" in mh.text_of(message)
    assert db.session.get(AlertChannel, channel.id).last_sent_at is not None


def test_email_without_a_server_is_retried_and_the_error_names_no_address(app, f):
    alerts.create_channel("运维邮件", "email", recipients="ops@example.com", min_severity="info")
    app.config.update({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": mh.free_port(), "SMTP_TLS": "none",
                       "SMTP_FROM": "alerts@kameng.example", "SMTP_TIMEOUT": 2})
    try:
        low_stock_product(f)
        ah.evaluate(kinds=["low_stock"])
    finally:
        app.config.update({"SMTP_HOST": None, "SMTP_PORT": 0, "SMTP_FROM": None})
    [delivery] = deliveries()
    assert delivery.status == "queued" and "发信服务器不可用" in delivery.last_error
    assert "ops@example.com" not in delivery.last_error


# --- rules over the other domains' rows --------------------------------------------------------------------------

def _order(f, status="paid", minutes_ago=60, **kw):
    from app.orders.models import Order

    product = kw.pop("product", None) or f.product(kind="direct")
    order = Order(order_no=f.unique("K"), product_id=product.id, supplier_id=product.supplier_id, quantity=1,
                  face_price=1000, unit_price=1000, amount=1000, cost_total=900, status=status, channel="alipay",
                  created_at=utcnow() - timedelta(minutes=minutes_ago),
                  paid_at=utcnow() - timedelta(minutes=minutes_ago), **kw)
    db.session.add(order)
    db.session.commit()
    return order


def test_supplier_balance_alert_follows_the_suppliers_low_balance_alert(app, f, robots):
    from app.catalog import service as catalog
    from app.suppliers.models import SupplierAlert

    ah.robot_channel(robots, "dingtalk")
    supplier = catalog.create_supplier("上游甲")
    row = SupplierAlert(supplier_id=supplier.id, kind="low_balance", value=12345, threshold=100000)
    db.session.add(row)
    db.session.commit()
    ah.evaluate(kinds=["supplier_balance"])
    [alert] = alerts_of("supplier_balance")
    assert alert.severity == "critical" and "上游甲 余额 ¥123.45（阈值 ¥1,000.00）" in alert.summary
    row.resolved_at = utcnow()
    db.session.commit()
    ah.evaluate(kinds=["supplier_balance"])
    assert alerts_of("supplier_balance")[0].status == "resolved" and len(robots.messages()) == 2


def test_top_ups_unknown_or_late_per_supplier(app, f):
    from app.suppliers.models import RechargeAttempt

    product = f.product(kind="direct")
    for status, minutes in (("unknown", 45), ("unknown", 5), ("processing", 40), ("succeeded", 90)):
        order = _order(f, product=product)
        db.session.add(RechargeAttempt(order_id=order.id, supplier_id=product.supplier_id, seq=1, upstream_code="X",
                                       cost=900, status=status, created_at=utcnow() - timedelta(minutes=minutes)))
        db.session.commit()
    ah.evaluate(kinds=["topup_unknown", "topup_late"])
    unknown, late = alerts_of("topup_unknown"), alerts_of("topup_late")
    assert len(unknown) == 1 and json.loads(unknown[0].facts)["count"] == 1  # the 5-minute one is not late yet
    assert len(late) == 1 and json.loads(late[0].facts)["count"] == 1


def test_delivery_sla_names_order_numbers_never_the_buyers_contact_or_account(app, f, robots):
    ah.robot_channel(robots, "feishu")
    late = _order(f, minutes_ago=30, contact="13800138000", account="game-account-77")
    _order(f, minutes_ago=3)  # within the SLA
    _order(f, status="failed", minutes_ago=90)
    ah.evaluate(kinds=["delivery_sla"])
    [alert] = alerts_of("delivery_sla")
    facts = json.loads(alert.facts)
    assert facts["count"] == 1 and facts["orders"] == [late.order_no]
    body = json.dumps(robots.messages()[0]["body"], ensure_ascii=False)
    assert late.order_no in body and "13800138000" not in body and "game-account-77" not in body


def test_payment_amount_mismatches_within_the_window_per_channel(app):
    from app.payments.models import PaymentNotification

    for minutes in (5, 20, 200):
        db.session.add(PaymentNotification(channel="alipay", order_no=f"K{minutes}", trade_no="T", amount=1,
                                           outcome="amount_mismatch", created_at=utcnow() - timedelta(minutes=minutes)))
    db.session.add(PaymentNotification(channel="wechatpay", order_no="KW", amount=1, outcome="accepted"))
    db.session.commit()
    ah.evaluate(kinds=["payment_mismatch"])
    [alert] = alerts_of("payment_mismatch")
    assert alert.key == "payment_mismatch:alipay" and json.loads(alert.facts)["count"] == 2
    assert "支付宝 近 60 分钟 2 笔" in alert.summary


def test_reconciliation_differences_until_the_day_reconciles_clean(app):
    from app.payments.models import StatementImport
    from app.payments.reconciliation import day_bounds

    start, end = day_bounds(utcnow().date() - timedelta(days=1))
    db.session.add(StatementImport(channel="wechatpay", source="scheduled", lines=10, matched=8, differences=2,
                                   period_start=start, period_end=end))
    db.session.commit()
    ah.evaluate(kinds=["reconciliation"])
    [alert] = alerts_of("reconciliation")
    assert alert.status == "open" and alert.key.startswith("reconciliation:wechatpay:")
    db.session.add(StatementImport(channel="wechatpay", source="scheduled", lines=10, matched=10, differences=0,
                                   period_start=start, period_end=end))
    db.session.commit()
    ah.evaluate(kinds=["reconciliation"])
    assert alerts_of("reconciliation")[0].status == "resolved"


def test_refund_failures_and_unanswered_refunds(app, f):
    from app.payments.models import Refund

    order = _order(f, status="refunded")
    failed = Refund(order_id=order.id, amount=1000, destination="alipay", reason="x", status="failed",
                    out_refund_no="R1", last_error="channel refused: buyer 13800138000")
    stuck = Refund(amount=500, destination="wechatpay", reason="x", status="processing", out_refund_no="R2",
                   attempts=6)
    fine = Refund(amount=500, destination="wechatpay", reason="x", status="processing", out_refund_no="R3",
                  attempts=1)
    db.session.add_all([failed, stuck, fine])
    db.session.commit()
    report = ah.evaluate(kinds=["refund_failed"])
    assert "error" not in report["refund_failed"], report
    found = {a.key: json.loads(a.facts) for a in alerts_of("refund_failed")}
    assert set(found) == {f"refund_failed:{failed.id}", f"refund_failed:{stuck.id}"}
    assert found[f"refund_failed:{failed.id}"]["order_no"] == order.order_no
    assert "13800138000" not in json.dumps(found)  # the channel's error text is not copied
    failed.status = "succeeded"
    db.session.commit()
    ah.evaluate(kinds=["refund_failed"])
    assert {a.key: a.status for a in alerts_of("refund_failed")}[f"refund_failed:{failed.id}"] == "resolved"


def test_failed_jobs_in_rqs_registry_until_removed(app, redis_url):
    from rq.registry import FailedJobRegistry

    from workers import jobs
    from workers.queues import get_queue
    from workers.runner import run_worker

    app.config["REDIS_URL"] = redis_url
    try:
        low = get_queue("low")
        low.enqueue(jobs.import_cards, 987654, job_id="card-import-987654", failure_ttl=3600)
        run_worker(["low"], burst=True, with_cron=False)
        ah.evaluate(kinds=["job_failed"])
        [alert] = alerts_of("job_failed")
        assert alert.key == "job_failed:low:import_cards" and json.loads(alert.facts)["jobs"] == ["card-import-987654"]
        FailedJobRegistry(queue=low).remove("card-import-987654", delete_job=True)
        ah.evaluate(kinds=["job_failed"])
        assert alerts_of("job_failed")[0].status == "resolved"
    finally:
        app.config["REDIS_URL"] = None


def test_risk_spike_opens_at_the_threshold_and_ends_below_half(app):
    from app.risk.models import RiskDecision

    db.session.execute(update(AlertRule).values(threshold=None))
    alerts.ensure_rules()
    db.session.execute(update(AlertRule).where(AlertRule.kind == "risk_spike").values(threshold=4, window_minutes=10))
    db.session.commit()

    def decisions(outcome: str, n: int, minutes_ago: int = 1) -> list[RiskDecision]:
        rows = [RiskDecision(event="checkout", outcome=outcome, stage="rule", score=0, hits="[]", features="{}",
                             subject="{}", rule_versions="{}", latency_us=1,
                             created_at=utcnow() - timedelta(minutes=minutes_ago)) for _ in range(n)]
        db.session.add_all(rows)
        db.session.commit()
        return rows

    decisions("allow", 10)
    decisions("block", 3)
    ah.evaluate(kinds=["risk_spike"])
    assert alerts_of("risk_spike") == []
    rows = decisions("review", 1)
    ah.evaluate(kinds=["risk_spike"])
    [alert] = alerts_of("risk_spike")
    assert json.loads(alert.facts)["blocks"] == 3 and json.loads(alert.facts)["reviews"] == 1
    for row in rows:  # 3 left in the window: below the threshold but not below half of it
        db.session.delete(row)
    db.session.commit()
    ah.evaluate(kinds=["risk_spike"])
    assert alerts_of("risk_spike")[0].status == "open"
    db.session.execute(update(RiskDecision).values(created_at=utcnow() - timedelta(minutes=30)))
    db.session.commit()
    ah.evaluate(kinds=["risk_spike"])
    assert alerts_of("risk_spike")[0].status == "resolved"


def test_every_rule_runs_on_an_empty_database(app):
    report = ah.evaluate()
    assert set(report) == set(alerts.RULES) and all("error" not in r for r in report.values()), report


# --- secrets ------------------------------------------------------------------------------------------------------

def test_channel_secrets_are_encrypted_and_never_in_logs_outbox_or_errors(app, f, robots, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    for name in ("app.alerts.service", "urllib3.connectionpool"):  # Alembic's fileConfig disabled them
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    channel, robot = ah.robot_channel(robots, "dingtalk")
    app.config["ALERT_RETRY_SECONDS"] = "0"
    try:
        robots.behave(http_status=500)
        low_stock_product(f)
        ah.evaluate(kinds=["low_stock"])
    finally:
        app.config["ALERT_RETRY_SECONDS"] = "30,120,600,1800,7200"
    raw = db.session.execute(text("SELECT webhook_enc, webhook_masked, secret_enc FROM alert_channel")).one()
    token, secret = robot["token"], robot["secret"]
    for value in raw:
        assert token not in value and secret not in value
    stored = [*db.session.scalars(select(OutboxMessage.payload)), *db.session.scalars(select(AlertDelivery.last_error)),
              *db.session.scalars(select(AuditEntry.new_value))]
    assert stored and all(token not in (s or "") and secret not in (s or "") for s in stored)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")  # werkzeug: the robot's log
    assert "low_stock" in ours and token not in ours and secret not in ours


def test_a_webhook_must_match_its_robot_and_wecom_takes_no_secret(app):
    from app.errors import ValidationError

    with pytest.raises(ValidationError, match="access_token"):
        alerts.create_channel("x", "dingtalk", webhook="https://oapi.dingtalk.com/robot/send")
    with pytest.raises(ValidationError, match="不需要密钥"):
        alerts.create_channel("x", "wecom", webhook="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
                              secret="s")
    with pytest.raises(ValidationError, match="收件人"):
        alerts.create_channel("x", "email", recipients="not an address")
    app.config["KAMENG_ENV"] = "production"
    try:
        with pytest.raises(ValidationError, match="https"):
            alerts.create_channel("x", "feishu", webhook="http://open.feishu.cn/open-apis/bot/v2/hook/t")
    finally:
        app.config["KAMENG_ENV"] = "development"
    assert db.session.scalar(select(AlertChannel.id)) is None


def test_the_fence_refuses_a_private_webhook_outside_development(app, f, robots):
    ah.robot_channel(robots, "wecom", signed=False)
    app.config["OUTBOUND_ALLOW_PRIVATE"] = False
    try:
        low_stock_product(f)
        ah.evaluate(kinds=["low_stock"])
    finally:
        app.config["OUTBOUND_ALLOW_PRIVATE"] = True
    [delivery] = deliveries()
    assert "destination refused" in delivery.last_error and robots.requests() == []


# --- screens -----------------------------------------------------------------------------------------------------

def _staff(app, f, role: str):
    user = f.user(f.unique(role.lower()), role=role)
    return f.login(app.test_client(), user.username)


def test_the_alert_log_is_read_by_admin_manager_and_support_only(app, f, robots):
    ah.robot_channel(robots, "wecom", signed=False)
    low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    [alert] = alerts_of()
    for role in ("Admin", "Manager", "Support"):
        client = _staff(app, f, role)
        page = client.get("/alerts/list/")
        assert page.status_code == 200 and "补货提醒：腾讯Q币 10元 库存 2（阈值 5）" in page.text, role
        shown = client.get(f"/alerts/show/{alert.id}")
        assert shown.status_code == 200 and "low_stock:" in shown.text and "已发送" in shown.text, role
    for role in ("Finance", "Agent"):
        client = _staff(app, f, role)
        assert client.get("/alerts/list/").status_code in (302, 403), role
        assert client.get("/alert-channels/list/").status_code in (302, 403), role
    support = _staff(app, f, "Support")
    assert support.get("/alert-channels/list/").status_code in (302, 403)
    assert support.get("/alert-rules/list/").status_code in (302, 403)


def test_an_admin_adds_a_signed_robot_in_the_form_and_sends_a_test_message(app, f, robots):
    robot = robots.register("dingtalk", signed=True)
    admin = _staff(app, f, "Admin")
    r = admin.post("/alert-channels/add", data={"name": "运营群", "kind": "dingtalk", "enabled": "y",
                                                 "webhook": robot["webhook"], "secret": robot["secret"],
                                                 "min_severity": "warning", "locale": "zh"}, follow_redirects=True)
    assert r.status_code == 200
    channel = db.session.scalar(select(AlertChannel).where(AlertChannel.name == "运营群"))
    assert channel is not None and channel.secret_enc and robot["token"] not in channel.webhook_enc
    listing = admin.get("/alert-channels/list/").text
    assert robot["token"] not in listing and robot["secret"] not in listing and "已设置" in listing
    # the test message goes through the job to the robot, which verified its signature
    r = admin.post("/alert-channels/action_post", data={"action": "test", "rowid": str(channel.id)},
                   follow_redirects=True)
    assert "已向「运营群」发送测试消息" in r.text
    [message] = robots.messages("dingtalk")
    assert "【测试】测试消息：告警渠道「运营群」可以收到告警" in text_of(message)
    audits = db.session.scalars(select(AuditEntry.new_value).where(AuditEntry.target_type == "alert_channel")).all()
    assert audits and all(robot["secret"] not in (a or "") and robot["token"] not in (a or "") for a in audits)
    # editing with the secret left blank keeps it; a webhook of the wrong robot is refused with a message
    r = admin.post(f"/alert-channels/edit/{channel.id}", data={"name": "运营群", "enabled": "y", "webhook": "",
                                                                "secret": "", "min_severity": "critical",
                                                                "locale": "en"}, follow_redirects=True)
    db.session.expire_all()
    channel = db.session.get(AlertChannel, channel.id)
    assert channel.secret_enc and channel.min_severity == "critical" and channel.locale == "en"
    r = admin.post(f"/alert-channels/edit/{channel.id}", data={
        "name": "运营群", "enabled": "y", "webhook": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
        "min_severity": "critical", "locale": "en"}, follow_redirects=True)
    assert r.status_code == 200 and "access_token" in r.text


def test_a_manager_reads_channels_and_rules_but_changes_nothing(app, f, robots):
    channel, _ = ah.robot_channel(robots, "feishu")
    manager = _staff(app, f, "Manager")
    assert manager.get("/alert-channels/list/").status_code == 200
    assert manager.get("/alert-rules/list/").status_code == 200
    assert manager.get("/alert-channels/add").status_code in (302, 403)
    manager.post("/alert-channels/action_post", data={"action": "test", "rowid": str(channel.id)})
    assert robots.messages() == [] and deliveries() == []
    rule = db.session.scalar(select(AlertRule).where(AlertRule.kind == "delivery_sla"))
    assert manager.post(f"/alert-rules/edit/{rule.id}", data={"threshold": "5"}).status_code in (302, 403)
    db.session.expire_all()
    assert db.session.get(AlertRule, rule.id).threshold is None


def test_an_admin_sets_a_rules_threshold_and_a_bad_one_is_a_form_error(app, f):
    admin = _staff(app, f, "Admin")
    assert admin.get("/alert-rules/list/").status_code == 200  # the rules' rows exist from here on
    rule = db.session.scalar(select(AlertRule).where(AlertRule.kind == "delivery_sla"))
    r = admin.post(f"/alert-rules/edit/{rule.id}", data={"enabled": "y", "severity": "critical", "threshold": "5",
                                                         "window_minutes": ""}, follow_redirects=True)
    assert r.status_code == 200
    db.session.expire_all()
    rule = db.session.get(AlertRule, rule.id)
    assert (rule.threshold, rule.severity) == (5, "critical")
    r = admin.post(f"/alert-rules/edit/{rule.id}", data={"enabled": "y", "severity": "critical",
                                                         "threshold": "-3"}, follow_redirects=True)
    assert r.status_code == 200
    db.session.expire_all()
    assert db.session.get(AlertRule, rule.id).threshold == 5
    late = _order(f, minutes_ago=7)
    ah.evaluate(kinds=["delivery_sla"])
    [alert] = alerts_of("delivery_sla")
    assert alert.severity == "critical" and json.loads(alert.facts)["orders"] == [late.order_no]


def test_an_english_channel_gets_english_words(app, f, robots):
    robot = robots.register("feishu", signed=True)
    alerts.create_channel("ops-en", "feishu", webhook=robot["webhook"], secret=robot["secret"], locale="en",
                          min_severity="info")
    low_stock_product(f)
    ah.evaluate(kinds=["low_stock"])
    [message] = robots.messages()
    words = text_of(message)
    assert "[Alert] Warning · Restock: 腾讯Q币 10元 has 2 left (threshold 5)" in words and "Rule: Low stock" in words


def test_with_redis_the_periodic_job_queues_messages_on_rq_and_a_worker_sends_them(app, f, robots, redis_url):
    from workers.queues import get_queue
    from workers.runner import run_worker
    from workers.schedule import PERIODIC

    [periodic] = [p for p in PERIODIC if p.name == "alerts-evaluate"]
    ah.robot_channel(robots, "dingtalk")
    low_stock_product(f)
    app.config["REDIS_URL"] = redis_url
    try:
        periodic.func()  # the job as the cron enqueues it
        from app.outbox.service import dispatch_due

        dispatch_due()  # what the worker does after each job
        [delivery] = deliveries()
        assert delivery.status == "queued" and robots.messages() == []  # nothing sent in the evaluation itself
        assert f"alert-{delivery.id}-0" in get_queue("high").get_job_ids()
        run_worker(["high"], burst=True, with_cron=False)
    finally:
        app.config["REDIS_URL"] = None
    assert [d.status for d in deliveries()] == ["sent"] and len(robots.messages("dingtalk")) == 1


# --- the receiver refuses what a real robot refuses ------------------------------------------------------------

def test_the_receiver_checks_units_signatures_tokens_and_sizes(app, robots):
    import requests

    now = time.time()
    ding = robots.register("dingtalk")
    text_body = {"msgtype": "text", "text": {"content": "x"}}

    def ding_post(ts: int, sign: str, token: str = ding["token"]) -> int:
        url = f"{robots.url}/robot/send?access_token={token}&timestamp={ts}&sign={quote(sign, safe='')}"
        return requests.post(url, json=text_body, timeout=5).json()["errcode"]

    ms = int(now * 1000)
    assert ding_post(ms, robot_protocol.dingtalk_sign(ding["secret"], ms)) == 0
    seconds = int(now)  # seconds where milliseconds are due: more than an hour off (1970)
    assert ding_post(seconds, robot_protocol.dingtalk_sign(ding["secret"], seconds)) == 310000
    assert ding_post(ms, robot_protocol.dingtalk_sign("SECother", ms)) == 310000
    assert ding_post(ms, robot_protocol.dingtalk_sign(ding["secret"], ms), token="nope") == 300001

    feishu = robots.register("feishu")

    def feishu_post(body: dict, token: str = feishu["token"]) -> int:
        return requests.post(f"{robots.url}/open-apis/bot/v2/hook/{token}", json=body, timeout=5).json()["code"]

    post = {"msg_type": "text", "content": {"text": "x"}}
    ts = int(now)
    assert feishu_post({"timestamp": str(ts), "sign": robot_protocol.feishu_sign(feishu["secret"], ts), **post}) == 0
    assert feishu_post({"timestamp": ts, "sign": robot_protocol.feishu_sign(feishu["secret"], ts), **post}) == 0
    ms_ts = int(now * 1000)  # milliseconds where seconds are due
    assert feishu_post({"timestamp": ms_ts, "sign": robot_protocol.feishu_sign(feishu["secret"], ms_ts),
                        **post}) == 19021
    dingtalk_style = base64.b64encode(hmac.new(feishu["secret"].encode(), f"{ts}\n{feishu['secret']}".encode(),
                                               hashlib.sha256).digest()).decode()
    assert feishu_post({"timestamp": ts, "sign": dingtalk_style, **post}) == 19021  # keyed the other way round
    assert feishu_post(post) == 19021  # a signed robot takes nothing unsigned
    assert feishu_post(post, token="nope") == 19001
    big = {"timestamp": ts, "sign": robot_protocol.feishu_sign(feishu["secret"], ts), "msg_type": "text",
           "content": {"text": "长" * 8000}}
    assert feishu_post(big) == 9499  # over 20 KB

    wecom = robots.register("wecom", signed=False)
    url = f"{robots.url}/cgi-bin/webhook/send?key={wecom['token']}"
    assert requests.post(url, json={"msgtype": "text", "text": {"content": "长" * 700}}, timeout=5).json()[
        "errcode"] == 40058  # 2100 bytes of text


def test_long_messages_are_cut_to_fit_each_robot(app, robots):
    message = robot_protocol.Message("标题" * 50, ["订单：" + "K" * 300] * 200, "https://kameng.example/alerts/show/1")
    for kind in ("dingtalk", "wecom", "feishu"):
        robot = robots.register(kind, signed=kind != "wecom")
        robot_protocol.send_robot(kind, robot["webhook"], robot["secret"], message)  # SendError unless accepted
    assert [m["kind"] for m in robots.messages()] == ["dingtalk", "wecom", "feishu"]
    wecom_text = robots.messages("wecom")[0]["body"]["text"]["content"]
    assert len(wecom_text.encode()) <= 2048 and wecom_text.endswith("…")


def test_commands_refuse_clearly(app):
    from app.cli import kameng_cli

    runner = app.test_cli_runner()
    result = runner.invoke(kameng_cli, ["alerts", "evaluate", "--rule", "nope"])
    assert result.exit_code == 2 and "unknown rule nope" in result.output
    result = runner.invoke(kameng_cli, ["alerts", "test", "999"])
    assert result.exit_code == 2 and "告警渠道不存在" in result.output
    result = runner.invoke(kameng_cli, ["alerts", "channel-add", "--name", "x", "--kind", "dingtalk",
                                        "--webhook", "https://oapi.dingtalk.com/robot/send"])
    assert result.exit_code == 2 and "access_token" in result.output
    app.config["KAMENG_ENV"] = "production"
    try:
        result = runner.invoke(kameng_cli, ["robot-sim", "--port", "1"])
        assert result.exit_code == 2 and "only with KAMENG_ENV=development" in result.output
    finally:
        app.config["KAMENG_ENV"] = "development"
    result = runner.invoke(kameng_cli, ["alerts", "evaluate", "--rule", "low_stock"])
    assert result.exit_code == 0 and json.loads(result.output)["low_stock"] == {"opened": 0, "resolved": 0, "open": 0}

"""Risk control screens through the FAB test client: 风控名单 (add / expire / remove, audited, masked), 风控规则
(expression errors are form errors, every save a new version, shadow hits counted), 风控日志 (explained and
replayed), 风控审核 (support approves -> delivered, rejects -> refunded and blacklisted; a manager only reads),
and the scheduled expiry of holds. No screen shows the buyer's phone in plaintext."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.audit.models import AuditEntry
from app.clock import utcnow
from app.orders.models import Order
from app.payments.models import Refund
from app.risk.models import RiskDecision, RiskListEntry, RiskRule, RiskRuleVersion
from tests import payments_helpers as h
from tests.test_admin_screens import alerts
from tests.test_risk_core import PHONE, _checkout, _cli

PHONE_SPELLINGS = (PHONE, "+8613912345678", "139 1234 5678", "1234 5678", "12345678")


def login(app, f, role: str):
    user = f.user(f.unique(role.lower()), role=role)
    client = app.test_client()
    f.login(client, user.username)
    return client, user


def no_phone(page: str) -> None:
    for spelling in PHONE_SPELLINGS:
        assert spelling not in page, spelling


def count(db, model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def audits(db, action: str) -> list[AuditEntry]:
    return list(db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def held_orders(app, f, client, n: int, device: str = "dev-watch"):
    """`n` storefront orders by the buyer PHONE on a watchlisted device, paid and so held for review:
    (product, order numbers)."""
    h.setup_sandbox()
    product = f.product(name="风控测试卡", secrets=n + 3)
    assert _cli(app, "list", "add", "--kind", "device", "--value", device, "--action", "review",
                "--reason", "可疑设备")[0] == 0
    numbers = []
    for _ in range(n):
        r = _checkout(client, product, device=device)
        assert r.status_code == 201, r.get_json()
        number = r.get_json()["order_no"]
        order = h.db.session.scalar(select(Order).where(Order.order_no == number))
        h.notify(client, "sandbox", order, "SBX-" + number)
        assert h.order_state(number) == "reviewing"
        numbers.append(number)
    return product, numbers


# ------------------------------------------------------------------------------------------------ 风控名单

def test_admin_adds_expires_and_removes_a_list_entry_masked_and_audited(app, db, f):
    admin, _user = login(app, f, "Admin")

    # a phone that is not one is a form error, and nothing is written
    r = admin.post("/risk-lists/add", data={"kind": "phone", "value": "12345", "action": "block"})
    assert r.status_code == 400 and "不是有效的手机号" in alerts(r.text)
    r = admin.post("/risk-lists/add", data={"kind": "phone", "value": PHONE, "action": "block", "days": "-3"})
    assert r.status_code == 400 and "有效天数" in alerts(r.text)
    r = admin.post("/risk-lists/add", data={"kind": "planet", "value": "x", "action": "block"})
    assert r.status_code == 400
    assert count(db, RiskListEntry) == 0 and audits(db, "risk_list.add") == []

    r = admin.post("/risk-lists/add", data={"kind": "phone", "value": "139 1234 5678", "action": "block",
                                            "reason": "盗刷", "days": "30"})
    assert r.status_code == 302
    no_phone(r.text)
    entry = db.session.scalar(select(RiskListEntry))
    assert (entry.kind, entry.action, entry.value, entry.removed_at) == ("phone", "block", None, None)
    assert entry.expires_at > utcnow() + timedelta(days=29)
    [added] = audits(db, "risk_list.add")
    no_phone(added.new_value)

    for url in ("/risk-lists/list/", f"/risk-lists/show/{entry.id}", "/risk-lists/add"):
        page = admin.get(url)
        assert page.status_code == 200, url
        no_phone(page.text)
    listed = admin.get("/risk-lists/list/").text
    assert entry.masked in listed and "黑名单" in listed and "手机号" in listed
    # the listed phone blocks a checkout spelled another way
    h.setup_sandbox()
    product = f.product(secrets=1)
    buyer = app.test_client()
    assert _checkout(buyer, product, contact="+86 139-1234-5678").status_code == 403

    # expire: a number of days is required
    r = admin.post(f"/risk-lists/expire/{entry.id}", data={"days": "abc"}, follow_redirects=True)
    assert "有效天数" in alerts(r.text)
    r = admin.post(f"/risk-lists/expire/{entry.id}", data={"days": "2"})
    assert r.status_code == 302
    db.session.expire_all()
    assert entry.expires_at < utcnow() + timedelta(days=3)
    assert len(audits(db, "risk_list.expire")) == 1

    r = admin.post(f"/risk-lists/remove/{entry.id}")
    assert r.status_code == 302
    db.session.expire_all()
    assert entry.removed_at is not None and entry.removed_by_id == _user.id
    assert len(audits(db, "risk_list.remove")) == 1
    # removing twice says so
    r = admin.post(f"/risk-lists/remove/{entry.id}", follow_redirects=True)
    assert "不存在或已移除" in alerts(r.text)
    assert _checkout(buyer, product, contact=PHONE).status_code == 201


# ------------------------------------------------------------------------------------------------ 风控规则

def rule_form(**overrides) -> dict:
    data = {"name": "big_orders", "events": "shop_checkout, checkout", "expression": "amount >= 100",
            "action": "review", "score": "0", "reason": "大额订单", "status": "shadow"}
    data.update(overrides)
    return data


@pytest.mark.parametrize("expression, expected", [
    ("amount >=", "syntax error"),
    ("amout >= 100", "amout"),
    ("amount >= 'abc'", "表达式有误"),
    ("amount % 7 > 'x'", "data type mismatch"),
    ("", "必填"),
])
def test_rule_with_a_bad_expression_is_a_form_error(app, db, f, expression, expected):
    admin, _ = login(app, f, "Admin")
    r = admin.post("/risk-rules/add", data=rule_form(expression=expression), follow_redirects=True)
    assert r.status_code == 200
    assert expected in alerts(r.text), alerts(r.text)
    assert count(db, RiskRule) == 0 and count(db, RiskRuleVersion) == 0


def test_unknown_event_is_a_form_error(app, db, f):
    admin, _ = login(app, f, "Admin")
    r = admin.post("/risk-rules/add", data=rule_form(events="checkout,teleport"), follow_redirects=True)
    assert "teleport" in alerts(r.text)
    assert count(db, RiskRule) == 0


def test_saving_a_rule_bumps_its_version_and_shadow_hits_are_counted(app, db, f):
    admin, user = login(app, f, "Admin")
    r = admin.post("/risk-rules/add", data=rule_form(), follow_redirects=True)
    assert alerts(r.text) == ""
    rule = db.session.scalar(select(RiskRule))
    assert (rule.version, rule.status, rule.events, rule.updated_by_id) == (1, "shadow", "shop_checkout,checkout",
                                                                              user.id)
    assert len(audits(db, "risk_rule.create")) == 1

    # the shadow rule fires on a checkout and decides nothing; the rule list counts the hit
    h.setup_sandbox()
    product = f.product(secrets=2)
    assert _checkout(app.test_client(), product).status_code == 201
    page = admin.get("/risk-rules/list/").text
    assert 'data-rule="big_orders" data-hits="1"' in page

    # a bad edit changes nothing
    r = admin.post(f"/risk-rules/edit/{rule.id}", data=rule_form(expression="amount >>> 1"), follow_redirects=True)
    assert "表达式有误" in alerts(r.text)
    db.session.expire_all()
    assert rule.version == 1 and count(db, RiskRuleVersion) == 1

    r = admin.post(f"/risk-rules/edit/{rule.id}", data=rule_form(expression="amount >= 200", status="active"),
                   follow_redirects=True)
    assert alerts(r.text) == ""
    db.session.expire_all()
    assert (rule.version, rule.expression, rule.status) == (2, "amount >= 200", "active")
    versions = db.session.scalars(select(RiskRuleVersion).order_by(RiskRuleVersion.version)).all()
    assert [(v.version, v.expression, v.status) for v in versions] == [(1, "amount >= 100", "shadow"),
                                                                      (2, "amount >= 200", "active")]
    [updated] = audits(db, "risk_rule.update")
    assert '"version": 2' in updated.new_value
    # active now: the running process sees the new version at once (the rule table's trigger moved the cache
    # version), and the next checkout is held
    r = _checkout(app.test_client(), product)
    order = db.session.scalar(select(Order).where(Order.order_no == r.get_json()["order_no"]))
    assert order.risk_hold


# ------------------------------------------------------------------------------------------------ 风控日志

def test_decision_log_lists_explains_and_replays_without_the_phone(app, db, f):
    _, held = held_orders(app, f, app.test_client(), 1)
    admin, _ = login(app, f, "Admin")
    page = admin.get("/risk-decisions/list/?_flt_0_outcome=review").text
    assert held[0] in page and "可疑设备" in page and "人工审核" in page
    no_phone(page)
    decision = db.session.scalar(select(RiskDecision).where(RiskDecision.order_no == held[0]))
    page = admin.get(f"/risk-decisions/show/{decision.id}").text
    assert "可疑设备" in page and "与记录一致" in page and "orders_device_10m" in page
    no_phone(page)
    assert admin.get("/risk-decisions/show/999999").status_code == 404
    # read only
    assert admin.get(f"/risk-decisions/edit/{decision.id}").status_code in (403, 404, 405)


# ------------------------------------------------------------------------------------------------ 风控审核

def test_manager_reads_the_queue_but_cannot_decide(app, db, f):
    _, [number] = held_orders(app, f, app.test_client(), 1)
    manager, _ = login(app, f, "Manager")
    page = manager.get("/risk-review/")
    assert page.status_code == 200 and number in page.text and "可疑设备" in page.text
    assert "approve-form" not in page.text
    no_phone(page.text)
    assert manager.get(f"/risk-review/{number}").status_code == 200
    assert manager.post(f"/risk-review/{number}/approve").status_code == 403
    assert manager.post(f"/risk-review/{number}/reject", data={"reason": "x"}).status_code == 403
    assert manager.get("/risk-lists/list/").status_code == 200
    assert manager.post("/risk-lists/add", data={"kind": "ip", "value": "203.0.113.9",
                                                 "action": "block"}).status_code == 403
    assert manager.get("/risk-rules/list/").status_code == 200
    assert manager.post("/risk-rules/add", data=rule_form()).status_code == 403
    assert h.order_state(number) == "reviewing" and count(db, RiskListEntry) == 1
    # agents see none of it
    agent = f.agent()
    agent_client = app.test_client()
    f.login(agent_client, agent.user.username)
    assert agent_client.get("/risk-review/").status_code == 403


def test_support_approves_one_hold_and_rejects_another_blacklisting_the_buyer(app, db, f):
    buyer = app.test_client()
    product, (first, second) = held_orders(app, f, buyer, 2)
    support, user = login(app, f, "Support")

    queue = support.get("/risk-review/").text
    assert first in queue and second in queue and "可疑设备" in queue
    assert queue.index(first) < queue.index(second)  # oldest first
    assert "其他订单" in queue and 'class="buyer-device"' in queue
    no_phone(queue)
    detail = support.get(f"/risk-review/{second}").text
    assert first in detail  # the same buyer's other order is in its history
    no_phone(detail)

    r = support.post(f"/risk-review/{first}/approve", data={})
    assert r.status_code == 302
    assert h.order_state(first) == "delivered"
    # deciding twice is a clear error, not a 500
    r = support.post(f"/risk-review/{first}/approve", data={})
    assert r.status_code == 409 and "不在风控审核中" in alerts(r.text)

    # a reason is required
    r = support.post(f"/risk-review/{second}/reject", data={"reason": "  ", "blacklist_device": "y"})
    assert r.status_code == 400 and "请填写拒绝原因" in alerts(r.text)
    assert h.order_state(second) == "reviewing" and count(db, RiskListEntry) == 1

    r = support.post(f"/risk-review/{second}/reject", data={"reason": "设备可疑", "blacklist_device": "y",
                                                            "blacklist_contact": "y"})
    assert r.status_code == 302
    assert h.order_state(second) == "refunded"
    db.session.rollback()
    [refund] = db.session.scalars(select(Refund))
    assert refund.destination == "sandbox" and "设备可疑" in refund.reason
    assert h.channel_answers_refund(refund) == "succeeded"
    blocked = db.session.scalars(select(RiskListEntry).where(RiskListEntry.action == "block")
                                 .order_by(RiskListEntry.kind)).all()
    assert [(e.kind, e.created_by_id) for e in blocked] == [("contact", user.id), ("device", user.id)]
    assert all(e.value is None for e in blocked)
    for action in ("risk.review.approve", "risk.review.reject"):
        assert [a.actor_id for a in audits(db, action)] == [user.id]
    assert support.get("/risk-review/").text.count('class="review-row') == 0
    # the blacklisted device, and the blacklisted contact on a fresh device, are refused now
    assert _checkout(buyer, product, device="dev-watch", contact="13700000000").status_code == 403
    assert _checkout(buyer, product, device="dev-new", contact=PHONE).status_code == 403
    assert _checkout(buyer, product, device="dev-new", contact="13700000000").status_code == 201
    no_phone(support.get("/risk-lists/list/").text)


def test_hold_older_than_review_hours_is_rejected_by_the_job(app, db, f):
    from workers import jobs

    _, (old, fresh) = held_orders(app, f, app.test_client(), 2)
    hours = app.config["RISK_REVIEW_HOURS"]
    db.session.execute(update(Order).where(Order.order_no == old)
                       .values(paid_at=utcnow() - timedelta(hours=hours, minutes=1)))
    db.session.commit()
    support, _ = login(app, f, "Support")
    queue = support.get("/risk-review/").text
    assert queue.count("overdue-flag") == 1  # past the SLA

    assert jobs.expire_review_holds() == 1
    assert (h.order_state(old), h.order_state(fresh)) == ("refunded", "reviewing")
    [refund] = db.session.scalars(select(Refund))
    assert "审核超时" in refund.reason
    assert h.channel_answers_refund(refund) == "succeeded"
    assert jobs.expire_review_holds() == 0  # idempotent
    from workers.schedule import PERIODIC

    assert [p.func for p in PERIODIC if p.name == "risk-review-expiry"] == [jobs.expire_review_holds]


def test_risk_screens_follow_the_language(app, db, f):
    from tests.test_i18n import fresh_request_state

    _, [number] = held_orders(app, f, app.test_client(), 1)
    admin, _ = login(app, f, "Admin")
    fresh_request_state()
    assert admin.get("/lang/en").status_code == 302
    for url, words in (("/risk-review/", ("Risk review", "Reject and refund")),
                       (f"/risk-review/{number}", ("Buyer history", "Risk decision")),
                       ("/risk-lists/list/", ("Risk lists", "Watchlist")),
                       ("/risk-lists/add", ("Add a list entry",)),
                       ("/risk-rules/list/", ("Risk rules", "Hits in the last 7 days")),
                       ("/risk-decisions/list/", ("Risk log", "Manual review"))):
        fresh_request_state()
        page = admin.get(url)
        assert page.status_code == 200, url
        for word in words:
            assert word in page.text, (url, word)
        no_phone(page.text)

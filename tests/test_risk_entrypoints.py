"""Risk control at every entry point besides the storefront checkout: the Open API order, the portal purchase, the
wallet top-up, the withdrawal request, the registration and the login. Each list kind that applies blocks (nothing
written) and reviews; a wallet purchase held for review is paid into buyer_funds and approved (delivered from
there) or rejected (back to the wallet); topped-up money not spent cannot be withdrawn (laundering); agents held at
registration cannot buy or withdraw until approved. The `app` fixture checks the ledger after each test."""
from __future__ import annotations

import json
import secrets
import time
import uuid

import pytest
from sqlalchemy import func, select

from app.agents.models import Agent
from app.audit.models import AuditEntry
from app.catalog.models import CardSecret
from app.errors import KamengError
from app.extensions import db
from app.ledger.service import agent_balances, balance_of
from app.network import invites, withdrawals
from app.network.models import Withdrawal
from app.orders.models import Order
from app.outbox.models import OutboxMessage
from app.payments import service as payments
from app.payments.channels import sandbox
from app.payments.models import Refund, WalletTopUp
from app.risk import agents as risk_agents
from app.risk import lists, reviews
from app.risk.default_rules import install_defaults
from app.risk.models import RiskDecision
from tests import supplier_sim_helpers
from tests.network_helpers import bank_card, id_number, idv_provider, verify
from tests.openapi_helpers import assert_error, new_key, signed_call
from tests.supplier_sim_helpers import sim_supplier

supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture

IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"
DEVICE = "fp-device-0001"
SANDBOX_KEY = "sandbox-entry-key-123"
BUYER_FUNDS = "platform:buyer_funds"


@pytest.fixture(autouse=True)
def _fresh_rules():
    """Compiled rules are kept per process: neither this test's rules nor another's may outlive the test."""
    from app.risk import rules

    rules._COMPILED.clear()
    yield
    rules._COMPILED.clear()


def _rule(name: str, events: str, expression: str, action: str = "review") -> None:
    """An active rule of the test's own (the default rules' thresholds are tuned elsewhere)."""
    from app.risk.default_rules import version_of
    from app.risk.models import RiskRule

    rule = RiskRule(name=name, events=events, expression=expression, action=action, score=0, reason=name,
                    status="active", version=1)
    db.session.add(rule)
    db.session.flush()
    db.session.add(version_of(rule))
    db.session.commit()


def _count(model) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model))


def _order(order_no: str) -> Order:
    db.session.rollback()
    db.session.expire_all()
    return db.session.scalar(select(Order).where(Order.order_no == order_no))


def _wallet(agent) -> int:
    db.session.rollback()
    return agent_balances(agent.id)["wallet"]


def _forget_user():
    from flask import g

    g.pop("_login_user", None)
    g.pop("user", None)


def _login(f, client, agent_or_name, ip: str = IP):
    _forget_user()
    client.environ_base["REMOTE_ADDR"] = ip
    name = agent_or_name if isinstance(agent_or_name, str) else agent_or_name.name
    return f.login(client, name)


def _flashes(client) -> list[str]:
    with client.session_transaction() as session:
        return [message for _, message in session.get("_flashes", [])]


# --- Open API ------------------------------------------------------------------------------------------------

@pytest.fixture
def api(f):
    """An agent (90% tier, under a parent earning 5% on its purchases) with ¥1,000.00, a card product (¥100.00
    face, 5 secrets) and an API key."""
    parent = f.agent(tier_obj=f.tier(discount_bp=9000, direct_commission_bp=500), with_user=False)
    tier = f.tier(discount_bp=9000)
    agent = f.agent(parent=parent, balance=100_000, tier_obj=tier)
    product = f.product(face_price=10_000, cost=8_000, secrets=5)
    key, secret = new_key(agent)
    return type("Api", (), {"agent": agent, "parent": parent, "tier": tier, "product": product, "key": key,
                            "secret": secret})


def _api_order(client, w, ip: str = IP, **extra):
    body = {"out_trade_no": uuid.uuid4().hex, "product_id": w.product.id, "quantity": 1, **extra}
    return signed_call(client, w.key, w.secret, "POST", "/open/v1/orders", body, remote_addr=ip)


@pytest.mark.parametrize("kind,value", [("ip", IP), ("cidr", "203.0.113.0/24"), ("agent", None)])
def test_open_api_list_block_refuses_and_writes_nothing(app, client, api, kind, value):
    lists.add(kind, value or api.agent.name, "block", reason="测试拦截")
    r = _api_order(client, api)
    body = assert_error(r, 403, "risk_blocked")
    assert "测试拦截" in body["error"]["message"]
    assert _count(Order) == 0 and _wallet(api.agent) == 100_000
    [decision] = db.session.scalars(select(RiskDecision))
    assert (decision.event, decision.outcome, decision.stage, decision.agent_id) == \
        ("openapi_order", "block", "list", api.agent.id)
    # another address is not on the list (the agent is, whatever the address)
    r = _api_order(client, api, ip=OTHER_IP)
    assert r.status_code == (403 if kind == "agent" else 201), r.get_json()


@pytest.mark.parametrize("kind,value", [("ip", IP), ("cidr", "203.0.113.0/24"), ("agent", None)])
def test_open_api_list_review_holds_the_paid_order_until_approved(app, client, api, kind, value):
    lists.add(kind, value or api.agent.name, "review")
    notify_url = "https://reseller.example/notify"
    r = _api_order(client, api, notify_url=notify_url)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    number = body["order_no"]
    assert body["status"] == "reviewing" and body["card_secrets"] == []
    # paid: the money left the wallet for buyer_funds; no secret taken, no commission, no callback yet
    assert _wallet(api.agent) == 100_000 - 9_000 and balance_of(BUYER_FUNDS) == 9_000
    order = _order(number)
    assert order.risk_hold and order.risk_decision_id
    assert db.session.get(RiskDecision, order.risk_decision_id).order_no == number
    assert _count(CardSecret) == 5 and db.session.scalar(
        select(func.count()).select_from(CardSecret).where(CardSecret.order_id.is_not(None))) == 0
    assert not list(db.session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "order_callback")))
    got = signed_call(client, api.key, api.secret, "GET", f"/open/v1/orders/{number}")
    assert got.get_json()["status"] == "reviewing" and got.get_json()["card_secrets"] == []
    # approved: delivered from buyer_funds exactly as a direct purchase would be; one callback, at the final status
    reviews.approve(number, None)
    order = _order(number)
    assert order.status == "delivered" and balance_of(BUYER_FUNDS) == 0
    assert _wallet(api.agent) == 91_000
    got = signed_call(client, api.key, api.secret, "GET", f"/open/v1/orders/{number}").get_json()
    assert got["status"] == "delivered" and len(got["card_secrets"]) == 1
    callbacks = [json.loads(m.payload)["status"] for m in db.session.scalars(
        select(OutboxMessage).where(OutboxMessage.topic == "order_callback"))]
    assert callbacks == ["delivered"]
    from app.network.models import Commission

    assert [(c.agent_id, c.amount) for c in db.session.scalars(select(Commission))] == [(api.parent.id, 450)]


def test_open_api_review_rejected_returns_the_money_to_the_wallet(app, client, api):
    lists.add("agent", api.agent.name, "review")
    number = _api_order(client, api).get_json()["order_no"]
    assert _wallet(api.agent) == 91_000
    reviews.reject(number, "可疑采购", None)
    order = _order(number)
    assert order.status == "refunded" and _wallet(api.agent) == 100_000 and balance_of(BUYER_FUNDS) == 0
    [refund] = db.session.scalars(select(Refund))
    assert refund.destination == "wallet" and refund.reason.startswith("风控拒绝")
    got = signed_call(client, api.key, api.secret, "GET", f"/open/v1/orders/{number}").get_json()
    assert got["status"] == "refunded" and got["card_secrets"] == []


def test_open_api_tier_limits_answer_risk_limit(app, client, api):
    api.tier.risk_order_limit = 8_000  # below one ¥90.00 order
    db.session.commit()
    assert_error(_api_order(client, api), 403, "risk_limit")
    api.tier.risk_order_limit = None
    api.tier.risk_daily_limit = 20_000  # two orders a day
    db.session.commit()
    assert _api_order(client, api).status_code == 201
    assert _api_order(client, api).status_code == 201
    assert_error(_api_order(client, api), 403, "risk_limit")
    assert _count(Order) == 2 and _wallet(api.agent) == 100_000 - 18_000


def test_a_replayed_open_api_order_is_not_judged_again(app, client, api):
    body = {"out_trade_no": "same-1", "product_id": api.product.id, "quantity": 1}
    first = signed_call(client, api.key, api.secret, "POST", "/open/v1/orders", body, remote_addr=IP)
    assert first.status_code == 201
    lists.add("ip", IP, "block")
    again = signed_call(client, api.key, api.secret, "POST", "/open/v1/orders", body, remote_addr=IP)
    assert again.status_code == 200 and again.get_json()["order_no"] == first.get_json()["order_no"]
    assert _count(RiskDecision) == 1


# --- portal purchase -----------------------------------------------------------------------------------------

def _buy(client, product, device: str | None = DEVICE, **extra):
    data = {"product_id": str(product.id), "quantity": "1", **extra}
    if device is not None:
        data["device_id"] = device
    return client.post("/portal/buy", data=data)


@pytest.mark.parametrize("kind,value", [("ip", IP), ("cidr", "203.0.113.0/28"), ("device", DEVICE),
                                        ("agent", None)])
def test_portal_purchase_list_kinds_block_and_review(app, f, client, kind, value):
    agent = f.agent(balance=50_000)
    product = f.product(face_price=10_000, cost=8_000, secrets=3)
    _login(f, client, agent)  # before the entry: a blacklist refuses the login too
    entry = lists.add(kind, value or agent.name, "block", reason="黑名单测试")
    r = _buy(client, product)
    assert r.status_code == 302 and "/portal/buy" in r.headers["Location"]
    assert any("黑名单测试" in m for m in _flashes(client))
    assert _count(Order) == 0 and _wallet(agent) == 50_000
    lists.remove(entry.id)
    lists.add(kind, value or agent.name, "review")
    r = _buy(client, product)
    assert r.status_code == 302 and "/portal/orders/" in r.headers["Location"]
    [order] = db.session.scalars(select(Order))
    assert order.status == "reviewing" and _wallet(agent) == 50_000 - order.amount
    assert any("风控审核" in m for m in _flashes(client))
    page = client.get(f"/portal/orders/{order.order_no}")
    assert "风控审核中" in page.get_data(as_text=True)
    reviews.reject(order.order_no, "测试拒绝", None)
    assert _wallet(agent) == 50_000 and _order(order.order_no).status == "refunded"


def test_portal_direct_purchase_held_then_approved_or_rejected(app, f, client, supplier_sim):
    agent = f.agent(balance=50_000)
    product = f.product(kind="direct", face_price=1_000, cost=880)
    sim_supplier(supplier_sim, priority=1, mappings={product.id: ("CMCC-10", 900)})
    lists.add("device", DEVICE, "review")
    _login(f, client, agent)
    numbers = []
    for _ in range(2):
        r = _buy(client, product, account="13800138000")
        assert r.status_code == 302, _flashes(client)
        numbers.append(r.headers["Location"].rsplit("/", 1)[1])
    for number in numbers:
        order = _order(number)
        assert order.status == "reviewing" and order.risk_hold
        assert not list(db.session.scalars(select(OutboxMessage).where(
            OutboxMessage.key.like(f"recharge:{number}%"))))  # no top-up while held
    paid = sum(_order(n).amount for n in numbers)
    assert _wallet(agent) == 50_000 - paid and balance_of(BUYER_FUNDS) == paid
    reviews.approve(numbers[0], None)
    assert _order(numbers[0]).status == "paid"  # handed to the recharge job, which the outbox queues
    assert [m.key for m in db.session.scalars(select(OutboxMessage).where(
        OutboxMessage.key.like(f"recharge:{numbers[0]}%")))] == [f"recharge:{numbers[0]}"]
    reviews.reject(numbers[1], "可疑直充", None)
    assert _order(numbers[1]).status == "refunded"
    assert _wallet(agent) == 50_000 - _order(numbers[0]).amount
    assert balance_of(BUYER_FUNDS) == _order(numbers[0]).amount
    # the held one still waits in buyer_funds for its supplier: give it back so the ledger closes
    order = _order(numbers[0])
    payments.refund_held_funds(order, "测试结束", None)
    from app.orders import service as orders

    orders.transition(order.id, "refunded")
    db.session.commit()


def test_portal_purchase_bad_device_id_is_a_form_error(app, f, client):
    agent = f.agent(balance=50_000)
    product = f.product(secrets=1)
    _login(f, client, agent)
    r = _buy(client, product, device="x" * 129)
    assert r.status_code == 302 and any("device_id" in m for m in _flashes(client))
    assert _count(Order) == 0


# --- top-ups and laundering ----------------------------------------------------------------------------------

@pytest.fixture
def channel(app):
    payments.save_channel("sandbox", True, {"key": SANDBOX_KEY})


def _pay_topup(client, topup: WalletTopUp) -> None:
    fields = {"order_no": topup.topup_no, "trade_no": "SBX" + secrets.token_hex(8), "amount": str(topup.amount),
              "currency": "CNY", "status": "SUCCESS", "ts": str(int(time.time())), "nonce": secrets.token_hex(8)}
    fields["sign"] = sandbox.sign(SANDBOX_KEY, fields)
    assert client.post("/pay/notify/sandbox", data=fields).status_code == 200


def _topup(f, client, agent, amount: str, device: str = DEVICE):
    _login(f, client, agent)
    return client.post("/portal/topup", data={"amount": amount, "channel": "sandbox", "device_id": device})


@pytest.mark.parametrize("kind,value", [("ip", IP), ("cidr", "203.0.113.0/24"), ("device", DEVICE),
                                        ("agent", None)])
def test_topup_refused_by_a_blacklist(app, f, client, channel, kind, value):
    agent = f.agent()
    _login(f, client, agent)
    lists.add(kind, value or agent.name, "block", reason="充值拦截")
    r = client.post("/portal/topup", data={"amount": "100", "channel": "sandbox", "device_id": DEVICE})
    assert r.status_code == 302 and r.headers["Location"].endswith("/portal/topup")
    assert any("充值拦截" in m for m in _flashes(client))
    assert _count(WalletTopUp) == 0
    [decision] = db.session.scalars(select(RiskDecision).where(RiskDecision.event == "wallet_topup"))
    assert decision.outcome == "block"


def test_topped_up_money_is_withdrawable_only_once_spent(app, f, client, channel, monkeypatch, redis_url):
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    agent = f.agent(tier_obj=f.tier(min_withdrawal=100, discount_bp=10_000))
    with idv_provider(app, monkeypatch):
        verify(agent)
    product = f.product(face_price=30_000, cost=20_000, secrets=2)
    assert _topup(f, client, agent, "500").status_code == 302
    topup = db.session.scalar(select(WalletTopUp))
    _pay_topup(client, topup)
    db.session.rollback()
    assert _wallet(agent) == 50_000 and db.session.get(Agent, agent.id).topup_unspent == 50_000
    # only earnings are withdrawable: none yet
    r = client.post("/portal/withdrawals/", data={"amount": "1"})
    assert r.status_code == 302 and any("充值未消费" in m for m in _flashes(client))
    assert _count(Withdrawal) == 0
    with pytest.raises(KamengError) as info:
        withdrawals.request_withdrawal(agent.id, 100)
    assert info.value.code == "topup_not_withdrawable"
    # earnings on top: withdrawable up to the earnings, not a fen more
    f.fund(agent, 10_000)
    with pytest.raises(KamengError):
        withdrawals.request_withdrawal(agent.id, 10_001)
    # spending ¥300 of the top-up leaves ¥200 unspent; a refund back to the wallet does not restore it
    assert _buy(client, product).status_code == 302
    db.session.rollback()
    assert db.session.get(Agent, agent.id).topup_unspent == 20_000
    assert _wallet(agent) == 30_000  # 50,000 + 10,000 - 30,000
    r = client.post("/portal/withdrawals/", data={"amount": "100.00"})
    assert r.status_code == 302 and any("提现申请已提交" in m for m in _flashes(client)), _flashes(client)
    [w] = db.session.scalars(select(Withdrawal))
    assert w.amount == 10_000
    with pytest.raises(KamengError) as info:  # what is left is top-up money
        withdrawals.request_withdrawal(agent.id, 100)
    assert info.value.code == "topup_not_withdrawable"


def test_topup_credit_counts_and_purchases_spend_it_first(app, f, client, channel):
    agent = f.agent(tier_obj=f.tier(discount_bp=10_000), balance=5_000)  # earnings first, then a top-up
    product = f.product(face_price=3_000, cost=2_000, secrets=3)
    _topup(f, client, agent, "40")
    _pay_topup(client, db.session.scalar(select(WalletTopUp)))
    db.session.rollback()
    assert db.session.get(Agent, agent.id).topup_unspent == 4_000
    from app.risk.models import RiskEvent

    assert [e.metric for e in db.session.scalars(select(RiskEvent).order_by(RiskEvent.id))] == ["topup"]
    for expected in (1_000, 0, 0):
        assert _buy(client, product).status_code == 302
        db.session.rollback()
        assert db.session.get(Agent, agent.id).topup_unspent == expected
    assert _wallet(agent) == 0


# --- withdrawals -----------------------------------------------------------------------------------------------

@pytest.fixture
def verified(app, f, monkeypatch):
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    agent = f.agent(tier_obj=f.tier(min_withdrawal=100), balance=100_000)
    with idv_provider(app, monkeypatch):
        verify(agent, card_last="8")
    return agent


@pytest.mark.parametrize("kind", ["ip", "cidr", "device", "agent", "id_number", "phone", "payment_account"])
def test_withdrawal_list_kinds_block(app, f, client, verified, kind):
    value = {"ip": IP, "cidr": "203.0.113.0/24", "device": DEVICE, "agent": verified.name,
             "id_number": id_number(seq=f"{verified.id % 1000:03d}"), "phone": "13812345678",
             "payment_account": bank_card("8")}[kind]  # what tests.network_helpers.verify submitted
    _login(f, client, verified)
    lists.add(kind, value, "block", reason="提现拦截")
    r = client.post("/portal/withdrawals/", data={"amount": "100", "device_id": DEVICE})
    assert r.status_code == 302 and any("提现拦截" in m for m in _flashes(client)), _flashes(client)
    assert _count(Withdrawal) == 0 and _wallet(verified) == 100_000


def test_withdrawal_review_shows_the_risk_reasons_to_the_reviewer(app, f, client, verified):
    _login(f, client, verified)
    lists.add("device", DEVICE, "review", reason="可疑设备")
    install_defaults()  # withdraw_fresh_verification: verified minutes ago
    client.post("/portal/withdrawals/", data={"amount": "100", "device_id": DEVICE})
    assert any("提现申请已提交" in m for m in _flashes(client)), _flashes(client)
    [w] = db.session.scalars(select(Withdrawal))
    assert w.status == "pending_review" and _wallet(verified) == 90_000
    decision = db.session.scalar(select(RiskDecision).where(RiskDecision.order_no == w.withdrawal_no))
    assert decision.event == "withdrawal" and decision.outcome == "review"
    assert json.loads(decision.features)["verified_age_hours"] < 1
    assert db.session.scalar(select(AuditEntry).where(AuditEntry.action == "risk.withdrawal.hold"))
    # the reviewer sees why
    reviewer = _login(f, app.test_client(), f.user(role="Manager").username)
    page = reviewer.get("/withdrawal-review/").get_data(as_text=True)
    assert "可疑设备" in page and "刚完成实名认证即提现" in page
    withdrawals.reject(w.id, None, "测试")


def test_withdrawal_soon_after_a_topup_goes_to_review(app, f, client, verified, channel):
    install_defaults()
    _topup(f, client, verified, "10")
    _pay_topup(client, db.session.scalar(select(WalletTopUp)))
    w = withdrawals.request_withdrawal(verified.id, 10_000)
    decision = db.session.scalar(select(RiskDecision).where(RiskDecision.order_no == w.withdrawal_no))
    features = json.loads(decision.features)
    assert decision.outcome == "review" and features["minutes_since_topup"] < 5
    assert 0 < features["topup_share"] < 0.01
    assert "withdraw_after_topup" in [h["name"] for h in json.loads(decision.hits)]
    withdrawals.reject(w.id, None, "测试")


# --- registration ----------------------------------------------------------------------------------------------

@pytest.fixture
def invite(f):
    top = f.tier(rank=30, may_recruit=True)
    low = f.tier(rank=10, may_recruit=False)
    inviter = f.agent(tier_obj=top)
    return invites.create_code(inviter.id, low.id).code


def _register(client, code: str, username: str, ip: str = IP, device: str = DEVICE, phone: str = "13800138000"):
    return client.post(f"/r/{code}", data={"username": username, "password": "s3cret-pass-9",
                                             "password2": "s3cret-pass-9", "display_name": username,
                                             "phone": phone, "device_id": device},
                       environ_base={"REMOTE_ADDR": ip})


@pytest.mark.parametrize("kind,value", [("ip", IP), ("cidr", "203.0.113.0/24"), ("device", DEVICE),
                                        ("phone", "+86 138 0013 8000"), ("agent", "farm_1")])
def test_registration_list_kinds_block_and_review(app, f, client, invite, kind, value):
    entry = lists.add(kind, value, "block", reason="注册拦截")
    r = _register(client, invite, "farm_1")
    assert r.status_code == 400 and "注册拦截" in r.get_data(as_text=True)
    assert db.session.scalar(select(Agent).where(Agent.name == "farm_1")) is None
    lists.remove(entry.id)
    lists.add(kind, value, "review")
    r = _register(client, invite, "farm_1")
    assert r.status_code == 201 and "风控审核" in r.get_data(as_text=True)
    held = db.session.scalar(select(Agent).where(Agent.name == "farm_1"))
    assert held.risk_hold and held.active


def test_many_registrations_from_one_address_are_held_and_cannot_buy_or_withdraw(app, f, client, invite,
                                                                                  monkeypatch):
    _rule("farm_from_one_ip", "registration", "registrations_ip_1h >= 5")  # the sixth from one address
    for i in range(6):
        assert _register(client, invite, f"farm_{i}", device=f"dev-{i}", phone=f"1380013800{i}").status_code == 201
    db.session.rollback()
    held = {a.name: a.risk_hold for a in db.session.scalars(select(Agent).where(Agent.name.like("farm_%")))}
    assert held == {"farm_0": False, "farm_1": False, "farm_2": False, "farm_3": False, "farm_4": False,
                    "farm_5": True}
    # another address is not part of the farm
    assert _register(client, invite, "elsewhere", ip=OTHER_IP, device="dev-x", phone="13900139000").status_code == 201
    assert not db.session.scalar(select(Agent).where(Agent.name == "elsewhere")).risk_hold

    agent = db.session.scalar(select(Agent).where(Agent.name == "farm_5"))
    f.fund(agent, 50_000)
    product = f.product(secrets=2)
    # the portal refuses with a clear message
    _forget_user()
    client.environ_base["REMOTE_ADDR"] = OTHER_IP
    f.login(client, "farm_5", "s3cret-pass-9")
    assert _buy(client, product).status_code == 302
    assert any("风控审核" in m for m in _flashes(client)) and _count(Order) == 0
    # the Open API too
    key, secret = new_key(agent)
    r = signed_call(client, key, secret, "POST", "/open/v1/orders",
                    {"out_trade_no": "held-1", "product_id": product.id, "quantity": 1})
    assert_error(r, 403, "risk_hold")
    # and withdrawals
    monkeypatch.setitem(app.config, "WITHDRAWAL_DAILY_LIMIT", 0)
    with idv_provider(app, monkeypatch):
        verify(agent, card_last="3")
    with pytest.raises(KamengError) as info:
        withdrawals.request_withdrawal(agent.id, 10_000)
    assert info.value.code == "risk_hold"
    # approved: it buys; the decision is audited
    assert [a.name for a in risk_agents.held()] == ["farm_5"]
    listed = app.test_cli_runner().invoke(args=["kameng", "risk", "agent", "list"])
    assert listed.exit_code == 0 and '"name": "farm_5"' in listed.output
    approved = app.test_cli_runner().invoke(args=["kameng", "risk", "agent", "approve", "farm_5"])
    assert approved.exit_code == 0 and '"risk_hold": false' in approved.output
    assert app.test_cli_runner().invoke(args=["kameng", "risk", "agent", "approve", "nobody"]).exit_code != 0
    assert _buy(client, product).status_code == 302 and _count(Order) == 1
    with pytest.raises(KamengError):
        risk_agents.approve(agent.id, None)  # not held any more
    # rejected: disabled
    other = db.session.scalar(select(Agent).where(Agent.name == "farm_5"))
    other.risk_hold = True
    db.session.commit()
    with pytest.raises(KamengError):
        risk_agents.reject(other.id, "", None)
    risk_agents.reject(other.id, "批量注册", None)
    db.session.rollback()
    assert not db.session.get(Agent, agent.id).active
    actions = [e.action for e in db.session.scalars(select(AuditEntry).where(
        AuditEntry.action.like("risk.agent.%")).order_by(AuditEntry.id))]
    assert actions == ["risk.agent.approve", "risk.agent.reject"]


# --- login -------------------------------------------------------------------------------------------------------

def _try_login(client, username: str, password: str, ip: str = IP):
    _forget_user()
    client.environ_base["REMOTE_ADDR"] = ip
    client.get("/logout/")
    _forget_user()
    r = client.post("/login/", data={"username": username, "password": password, "device_id": DEVICE})
    return r.status_code == 302 and "/login" not in r.headers["Location"]


def test_password_guessing_from_one_address_is_blocked_then_other_addresses_still_log_in(app, f, client):
    install_defaults()  # login_bruteforce: many failed logins from one IP within the hour
    user = f.user()
    assert _try_login(client, user.username, f.PASSWORD)  # the right password is no failure
    failures = 0
    while failures < 100:
        assert not _try_login(client, user.username, "wrong-password")
        failures += 1
        if not _try_login(client, user.username, f.PASSWORD):  # refused despite the right password: blocked
            break
    assert failures < 100, "never blocked"
    assert any("风控" in m for m in _flashes(client))
    assert _try_login(client, user.username, f.PASSWORD, ip=OTHER_IP)  # another address logs in
    from app.risk.models import RiskEvent

    assert _count(RiskEvent) == failures  # only wrong passwords count
    decisions = list(db.session.scalars(select(RiskDecision).where(RiskDecision.event == "login")
                                        .order_by(RiskDecision.id)))
    assert [d.outcome for d in decisions].count("block") == 1 and decisions[-2].outcome == "block"
    assert json.loads(decisions[-2].features)["logins_failed_ip_1h"] == failures


@pytest.mark.parametrize("kind,value", [("ip", IP), ("device", DEVICE), ("agent", None)])
def test_login_refused_by_a_blacklist(app, f, client, kind, value):
    user = f.user()
    lists.add(kind, value or user.username, "block")
    assert not _try_login(client, user.username, f.PASSWORD)
    lists.add("ip", OTHER_IP, "review")  # a watch list does not stop a login
    if kind != "ip":
        return
    assert _try_login(client, user.username, f.PASSWORD, ip=OTHER_IP)

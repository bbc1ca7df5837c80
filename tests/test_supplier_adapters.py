"""Supplier adapters over real HTTP: the simulator adapter against the supplier simulator, the kameng adapter
against a second Kameng served on 127.0.0.1."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from app import crypto
from app.catalog import service as catalog
from app.extensions import db
from app.openapi import signing
from app.suppliers.adapters import SupplierNotConnected, connection_for, get_adapter
from app.suppliers.adapters.base import (
    FAILED,
    NOT_FOUND,
    PROCESSING,
    SUBMITTED,
    SUCCESS,
    Connection,
    InvalidCallback,
    UpstreamUnreachable,
)
from app.suppliers.adapters.kameng import KamengAdapter
from app.suppliers.adapters.simulator import SimulatorAdapter
from tests import factories, supplier_sim_helpers
from tests.openapi_helpers import Receiver, new_key, served
from tests.supplier_sim_helpers import SIM_KEY, sim_supplier

supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture (an assignment, so ruff sees no shadowed import)

PHONE = "13800138000"
NOTIFY_PATH = "/supplier/notify/7"


def sim_adapter(sim, timeout: float = 2.0, notify_url: str | None = None, secret: str | None = None,
                app_key: str | None = None) -> SimulatorAdapter:
    return SimulatorAdapter(Connection(supplier_id=7, protocol="simulator", endpoint=sim.url,
                                       app_key=app_key or sim.app_key, secret=secret or sim.key, timeout=timeout,
                                       notify_url=notify_url))


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


# --- submit and query -----------------------------------------------------------------------------------------

def test_submit_success_credits_once_and_debits_the_balance(supplier_sim):
    adapter = sim_adapter(supplier_sim)
    before = adapter.query_balance()
    result = adapter.submit("K0001", "CMCC-30", PHONE, 2)
    assert result.status == SUCCESS and result.trade_no.startswith("SIM")
    assert adapter.query_balance() == before - 2 * 2955
    order = supplier_sim.orders()["K0001"]
    assert (order["credits"], order["submits"], order["amount"], order["account"]) == (1, 1, 5910, PHONE)
    again = adapter.query("K0001")
    assert (again.status, again.trade_no) == (SUCCESS, result.trade_no)


def test_fail_mode_is_a_definite_failure_and_credits_nothing(supplier_sim):
    supplier_sim.behave("CMCC-10", mode="fail")
    adapter = sim_adapter(supplier_sim)
    before = adapter.query_balance()
    result = adapter.submit("K0002", "CMCC-10", PHONE, 1)
    assert result.status == FAILED and result.message
    assert adapter.query("K0002").status == FAILED
    assert adapter.query_balance() == before
    assert supplier_sim.orders()["K0002"]["credits"] == 0
    # Another code still follows the default behaviour.
    assert adapter.submit("K0003", "CMCC-50", PHONE, 1).status == SUCCESS


@pytest.mark.parametrize("answer", ["processing", "submitted"])
def test_pending_answers_processing_then_the_final_state_after_the_polls(supplier_sim, answer):
    supplier_sim.behave("TENCENT-QB-10", mode="pending", pending_polls=2, answer=answer)
    adapter = sim_adapter(supplier_sim)
    assert adapter.submit("K0004", "TENCENT-QB-10", "123456789", 1).status == answer
    assert supplier_sim.orders()["K0004"]["credits"] == 0
    assert adapter.query("K0004").status == PROCESSING
    assert adapter.query("K0004").status == PROCESSING
    final = adapter.query("K0004")
    assert final.status == SUCCESS
    order = supplier_sim.orders()["K0004"]
    assert (order["credits"], order["queries"]) == (1, 3)
    assert supplier_sim.sim.products["TENCENT-QB-10"]["stock"] == 499


def test_pending_can_end_failed(supplier_sim):
    supplier_sim.behave(mode="pending", pending_polls=0, final="failed")
    adapter = sim_adapter(supplier_sim)
    assert adapter.submit("K0005", "IQIYI-MONTH", "user@example.com", 1).status == PROCESSING
    assert adapter.query("K0005").status == FAILED
    assert supplier_sim.orders()["K0005"]["credits"] == 0


def test_timeout_raises_unreachable_and_a_later_query_shows_the_real_result(supplier_sim):
    supplier_sim.behave("CMCC-10", mode="timeout", timeout_ms=1500)
    adapter = sim_adapter(supplier_sim, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamUnreachable):
        adapter.submit("K0006", "CMCC-10", PHONE, 1)
    assert time.monotonic() - started < 1.2  # our timeout, not the upstream's sleep
    assert adapter.query("K0006").status == SUCCESS
    assert supplier_sim.orders()["K0006"]["credits"] == 1


@pytest.mark.parametrize("mode", ["unknown", "garbage"])
def test_unreadable_answers_are_unreachable_but_the_order_was_processed(supplier_sim, mode):
    supplier_sim.behave(mode=mode)
    adapter = sim_adapter(supplier_sim)
    with pytest.raises(UpstreamUnreachable):
        adapter.submit("K0007", "CMCC-10", PHONE, 1)
    assert adapter.query("K0007").status == SUCCESS
    assert supplier_sim.orders()["K0007"]["credits"] == 1


def test_error_mode_refuses_without_recording(supplier_sim):
    supplier_sim.behave(mode="error")
    adapter = sim_adapter(supplier_sim)
    with pytest.raises(UpstreamUnreachable, match="503"):
        adapter.submit("K0008", "CMCC-10", PHONE, 1)
    assert adapter.query("K0008").status == NOT_FOUND
    assert "K0008" not in supplier_sim.orders()
    # Once it recovers, the same order number is simply a new order.
    supplier_sim.behave(mode="success")
    assert adapter.submit("K0008", "CMCC-10", PHONE, 1).status == SUCCESS


def test_resubmitting_is_idempotent(supplier_sim):
    adapter = sim_adapter(supplier_sim)
    first = adapter.submit("K0009", "CMCC-100", PHONE, 1)
    balance = adapter.query_balance()
    second = adapter.submit("K0009", "CMCC-100", PHONE, 1)
    assert (second.status, second.trade_no) == (SUCCESS, first.trade_no)
    assert adapter.query_balance() == balance
    order = supplier_sim.orders()["K0009"]
    assert (order["credits"], order["submits"]) == (1, 2)


def test_concurrent_resubmits_credit_once(supplier_sim):
    supplier_sim.behave(latency_ms=50)
    adapter = sim_adapter(supplier_sim)
    results = []
    threads = [threading.Thread(target=lambda: results.append(adapter.submit("K0010", "CMCC-10", PHONE, 1)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status for r in results} == {SUCCESS} and len({r.trade_no for r in results}) == 1
    assert supplier_sim.orders()["K0010"]["credits"] == 1
    assert supplier_sim.orders()["K0010"]["submits"] == 8


@pytest.mark.parametrize("code, account, setup, reason", [
    ("NO-SUCH-CODE", PHONE, None, "unknown product code"),
    ("IQIYI-MONTH", "someone", ("IQIYI-MONTH", 0), "out of stock"),
    ("CMCC-10", "12345", None, "not a mobile number"),
    ("CMCC-100", PHONE, "poor", "insufficient funds"),
])
def test_refusals_are_definite_failures(supplier_sim, code, account, setup, reason):
    if setup == "poor":
        supplier_sim.set_balance(9849)
    elif setup:
        supplier_sim.set_stock(*setup)
    adapter = sim_adapter(supplier_sim)
    result = adapter.submit("K0011", code, account, 1)
    assert result.status == FAILED and reason in result.message
    assert supplier_sim.orders()["K0011"]["credits"] == 0


def test_a_malformed_request_is_refused_as_failed_without_recording(supplier_sim):
    result = sim_adapter(supplier_sim).submit("K0012", "CMCC-10", PHONE, 0)
    assert result.status == FAILED and "400" in result.message
    assert "K0012" not in supplier_sim.orders()


def test_a_wrong_secret_or_app_key_is_refused(supplier_sim):
    wrong = (sim_adapter(supplier_sim, secret="not-the-secret"), sim_adapter(supplier_sim, app_key="other"))
    for adapter in wrong:
        with pytest.raises(UpstreamUnreachable, match="401"):
            adapter.submit("K0013", "CMCC-10", PHONE, 1)
        with pytest.raises(UpstreamUnreachable, match="401"):
            adapter.query_balance()
    assert "K0013" not in supplier_sim.orders()


def test_a_replayed_request_is_refused(supplier_sim):
    body = json.dumps({"order_no": "K0014", "code": "CMCC-10", "account": PHONE, "quantity": 1}).encode()
    headers = signing.signed_headers(supplier_sim.app_key, supplier_sim.key, "POST", "/api/recharge", body)
    headers["Content-Type"] = "application/json"
    first = requests.post(supplier_sim.url + "/api/recharge", data=body, headers=headers, timeout=5)
    replay = requests.post(supplier_sim.url + "/api/recharge", data=body, headers=headers, timeout=5)
    assert first.status_code == 200 and replay.status_code == 401
    stale = signing.signed_headers(supplier_sim.app_key, supplier_sim.key, "GET", "/api/balance", b"",
                                   now=int(time.time()) - 400)
    assert requests.get(supplier_sim.url + "/api/balance", headers=stale, timeout=5).status_code == 401


def test_an_unreachable_upstream_is_unreachable():
    adapter = SimulatorAdapter(Connection(supplier_id=1, protocol="simulator", endpoint="http://127.0.0.1:9",
                                          app_key="a", secret="b", timeout=1))
    with pytest.raises(UpstreamUnreachable):
        adapter.submit("K0015", "CMCC-10", PHONE, 1)
    with pytest.raises(UpstreamUnreachable):
        adapter.query("K0015")


def test_global_latency_applies_to_every_answer(supplier_sim):
    supplier_sim.sim.latency_ms = 400
    with pytest.raises(UpstreamUnreachable):
        sim_adapter(supplier_sim, timeout=0.2).query_balance()
    assert sim_adapter(supplier_sim, timeout=2).query_balance() > 0


# --- balance and stock ----------------------------------------------------------------------------------------

def test_balance_and_stock(supplier_sim):
    supplier_sim.set_balance(123456)
    supplier_sim.set_stock("TENCENT-QB-10", 3, 999)
    supplier_sim.set_stock("NEW-CODE", None, 100)
    adapter = sim_adapter(supplier_sim)
    assert adapter.query_balance() == 123456
    stock = {item.code: item for item in adapter.list_stock()}
    assert (stock["TENCENT-QB-10"].stock, stock["TENCENT-QB-10"].price) == (3, 999)
    assert stock["CMCC-10"].stock is None and stock["CMCC-10"].price == 985 and stock["CMCC-10"].available
    assert stock["NEW-CODE"].price == 100 and stock["IQIYI-MONTH"].name == "爱奇艺黄金会员月卡"
    assert adapter.submit("K0016", "TENCENT-QB-10", "10001", 3).status == SUCCESS
    assert {i.code: i.stock for i in adapter.list_stock()}["TENCENT-QB-10"] == 0
    assert adapter.query_balance() == 123456 - 3 * 999
    assert adapter.submit("K0017", "TENCENT-QB-10", "10001", 1).status == FAILED


# --- callbacks ------------------------------------------------------------------------------------------------

def test_callbacks_are_signed_and_parse(supplier_sim, receiver):
    notify_url = receiver.url(NOTIFY_PATH)
    supplier_sim.behave("CMCC-10", mode="pending", pending_polls=100, complete_after_ms=100,
                        duplicate_callbacks=2)
    adapter = sim_adapter(supplier_sim, notify_url=notify_url)
    result = adapter.submit("K0020", "CMCC-10", PHONE, 1)
    assert result.status == PROCESSING
    calls = receiver.wait_for(3)
    assert len(calls) == 3 and all(c["path"] == NOTIFY_PATH for c in calls)
    assert supplier_sim.wait_callbacks("K0020", 3)["credits"] == 1
    parsed = [adapter.parse_callback(c["headers"], c["body"]) for c in calls]
    assert {(p.order_no, p.status, p.trade_no) for p in parsed} == {("K0020", SUCCESS, result.trade_no)}
    assert parsed[0].answer == "success"
    assert adapter.query("K0020").status == SUCCESS  # the upstream finished it itself


def test_forged_and_stale_callbacks_are_refused(supplier_sim, receiver):
    notify_url = receiver.url(NOTIFY_PATH)
    supplier_sim.behave(mode="fail")
    adapter = sim_adapter(supplier_sim, notify_url=notify_url)
    adapter.submit("K0021", "CMCC-10", PHONE, 1)
    genuine = receiver.wait_for(1)[0]
    assert adapter.parse_callback(genuine["headers"], genuine["body"]).status == FAILED
    forged_body = genuine["body"].replace(b'"failed"', b'"success"')
    with pytest.raises(InvalidCallback):
        adapter.parse_callback(genuine["headers"], forged_body)
    # Signed with another secret, or under another app key, or for another path (another supplier's URL).
    for secret, app_key, path in (("wrong-secret", supplier_sim.app_key, NOTIFY_PATH),
                                  (SIM_KEY, "someone-else", NOTIFY_PATH), (SIM_KEY, supplier_sim.app_key,
                                                                           "/supplier/notify/8")):
        headers = signing.signed_headers(app_key, secret, "POST", path, forged_body)
        with pytest.raises(InvalidCallback):
            adapter.parse_callback(headers, forged_body)
    stale = signing.signed_headers(supplier_sim.app_key, SIM_KEY, "POST", NOTIFY_PATH, forged_body,
                                   now=int(time.time()) - 301)
    with pytest.raises(InvalidCallback, match="stale"):
        adapter.parse_callback(stale, forged_body)
    with pytest.raises(InvalidCallback):
        adapter.parse_callback({}, genuine["body"])
    fresh = signing.signed_headers(supplier_sim.app_key, SIM_KEY, "POST", NOTIFY_PATH, b"not json")
    with pytest.raises(InvalidCallback):
        adapter.parse_callback(fresh, b"not json")
    # Header names arrive in any case.
    lower = {k.lower(): v for k, v in genuine["headers"].items()}
    assert adapter.parse_callback(lower, genuine["body"]).order_no == "K0021"


def test_a_late_callback_follows_a_query_that_resolved_the_order(supplier_sim, receiver):
    supplier_sim.behave(mode="pending", pending_polls=0, callback_delay_ms=300)
    adapter = sim_adapter(supplier_sim, notify_url=receiver.url(NOTIFY_PATH))
    adapter.submit("K0022", "CMCC-10", PHONE, 1)
    assert adapter.query("K0022").status == SUCCESS
    assert receiver.requests == []  # not yet: it comes after the query told us
    late = receiver.wait_for(1)[0]
    assert adapter.parse_callback(late["headers"], late["body"]).status == SUCCESS


def test_callback_all_also_reports_the_first_answer(supplier_sim, receiver):
    supplier_sim.behave(mode="pending", callback="all", answer="submitted")
    adapter = sim_adapter(supplier_sim, notify_url=receiver.url(NOTIFY_PATH))
    adapter.submit("K0023", "CMCC-10", PHONE, 1)
    first = receiver.wait_for(1)[0]
    assert adapter.parse_callback(first["headers"], first["body"]).status == SUBMITTED


def test_the_control_api_validates_behaviours(supplier_sim):
    response = requests.post(supplier_sim.url + "/_sim/behaviour", json={"code": "*", "mode": "explode"},
                             timeout=5)
    assert response.status_code == 400
    response = requests.post(supplier_sim.url + "/_sim/behaviour", json={"pending_pols": 1}, timeout=5)
    assert response.status_code == 400
    assert supplier_sim.behave(callback=False)["callback"] == "none"


def test_the_control_api_answers_only_on_loopback(supplier_sim):
    from werkzeug.test import Client

    outside = Client(supplier_sim.sim).post("/_sim/balance", json={"balance": 1},
                                            environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert outside.status_code == 403
    assert supplier_sim.balance() == 100_000_000


def test_an_order_finished_by_a_query_and_by_the_upstream_at_once_credits_once(supplier_sim):
    supplier_sim.behave(mode="pending", pending_polls=0, complete_after_ms=30, callback=False)
    adapter = sim_adapter(supplier_sim)
    for n in range(5):
        order_no = f"K004{n}"
        adapter.submit(order_no, "CMCC-10", PHONE, 1)
        threads = [threading.Thread(target=adapter.query, args=(order_no,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    time.sleep(0.1)
    orders = supplier_sim.orders()
    assert [orders[f"K004{n}"]["credits"] for n in range(5)] == [1] * 5
    assert supplier_sim.balance() == 100_000_000 - 5 * 985


# --- the registry (Supplier rows) -----------------------------------------------------------------------------

def test_get_adapter_connects_a_supplier_row(app, supplier_sim, f):
    product = f.product(kind="direct", face_price=1000, cost=985)
    supplier = sim_supplier(supplier_sim, mappings={product.id: ("CMCC-10", 985)}, timeout_seconds=3)
    app.config["PUBLIC_BASE_URL"] = "https://kameng.example.com/"
    try:
        conn = connection_for(supplier)
    finally:
        app.config["PUBLIC_BASE_URL"] = None
    assert (conn.secret, conn.timeout, conn.endpoint) == (SIM_KEY, 3.0, supplier_sim.url)
    assert conn.notify_url == f"https://kameng.example.com/supplier/notify/{supplier.id}"
    assert connection_for(supplier).notify_url is None  # a job without PUBLIC_BASE_URL: polling only
    with app.test_request_context("/", base_url="http://shop.local:8000"):
        assert connection_for(supplier).notify_url == f"http://shop.local:8000/supplier/notify/{supplier.id}"
    adapter = get_adapter(supplier)
    assert adapter.submit("K0030", "CMCC-10", PHONE, 1).status == SUCCESS

    wrong = sim_supplier(supplier_sim, key="not-the-secret")
    with pytest.raises(UpstreamUnreachable, match="401"):
        get_adapter(wrong).query_balance()


def test_get_adapter_refuses_suppliers_it_cannot_reach(app, f):
    own = catalog.platform_supplier()
    with pytest.raises(SupplierNotConnected):
        get_adapter(own)
    own.protocol, own.endpoint, own.app_key, own.secret_enc = "kameng", "http://x", "k", None
    with pytest.raises(SupplierNotConnected):
        get_adapter(own)
    own.protocol, own.secret_enc = "carrier-pigeon", "token"
    with pytest.raises(SupplierNotConnected, match="对接协议未知"):
        connection_for(own)
    own.protocol = "simulator"
    with pytest.raises(SupplierNotConnected, match="密钥无法解密"):
        connection_for(own)


# --- the kameng adapter: another Kameng (served over HTTP on 127.0.0.1) is the upstream -----------------------
# The upstream Kameng is the test app itself, served by a threaded werkzeug server: its agent, API key and
# products live in the test database, which the app fixture empties before each test.

@pytest.fixture
def upstream(app, f):
    agent = f.agent(balance=50_000, tier_obj=f.tier(discount_bp=9000))
    card = f.product(face_price=10_000, cost=8_000, secrets=3)
    key, secret = new_key(agent, name="downstream kameng")

    class Upstream:
        pass

    up = Upstream()
    up.agent, up.card, up.key, up.secret, up.f = agent, card, key, secret, f
    with served(app) as base:
        up.url = base
        yield up


def kameng_adapter(up, notify_url: str | None = None, secret: str | None = None, endpoint: str | None = None,
                   app_key: str | None = None):
    return KamengAdapter(Connection(supplier_id=9, protocol="kameng", endpoint=endpoint or up.url,
                                    app_key=app_key or up.key.app_key, secret=secret or up.secret, timeout=10,
                                    notify_url=notify_url))


def test_kameng_submit_of_a_card_product_comes_back_with_its_secrets(app, upstream, receiver):
    adapter = kameng_adapter(upstream, notify_url=receiver.url("/supplier/notify/9"))
    result = adapter.submit("KM0001", str(upstream.card.id), "", 2)
    assert result.status == SUCCESS and result.trade_no and len(result.card_secrets) == 2
    assert len(set(result.card_secrets)) == 2
    assert factories.wallet(upstream.agent) == 50_000 - 2 * 9_000  # paid once, at the agent's price
    # The same order number again: the upstream answers the same order, charging nothing more.
    again = adapter.submit("KM0001", str(upstream.card.id), "", 2)
    assert (again.trade_no, again.card_secrets) == (result.trade_no, result.card_secrets)
    queried = adapter.query("KM0001")
    assert (queried.status, queried.trade_no, queried.card_secrets) == (SUCCESS, result.trade_no,
                                                                       result.card_secrets)
    assert factories.wallet(upstream.agent) == 32_000
    assert adapter.query("KM-NEVER-SENT").status == NOT_FOUND
    assert adapter.query_balance() == 32_000


def test_kameng_resubmit_with_other_details_reports_the_existing_order(app, upstream, receiver):
    first = kameng_adapter(upstream).submit("KM0002", str(upstream.card.id), "", 1)
    # Later our callback address changed: the upstream holds KM0002 with another body (409) → it is still ours.
    moved = kameng_adapter(upstream, notify_url=receiver.url("/supplier/notify/9"))
    second = moved.submit("KM0002", str(upstream.card.id), "", 1)
    assert (second.status, second.trade_no, second.card_secrets) == (SUCCESS, first.trade_no, first.card_secrets)
    assert factories.wallet(upstream.agent) == 41_000


def test_kameng_business_refusals_are_failures(app, upstream):
    adapter = kameng_adapter(upstream)
    poor_key, poor_secret = new_key(upstream.f.agent(balance=100, tier_obj=upstream.f.tier(discount_bp=9000)))
    poor_adapter = kameng_adapter(upstream, app_key=poor_key.app_key, secret=poor_secret)
    result = poor_adapter.submit("KM0003", str(upstream.card.id), "", 1)
    assert result.status == FAILED and "insufficient_balance" in result.message
    assert poor_adapter.query("KM0003").status == NOT_FOUND

    sold_out = adapter.submit("KM0004", str(upstream.card.id), "", 4)  # 3 cards in stock
    assert sold_out.status == FAILED and "out_of_stock" in sold_out.message
    assert adapter.submit("KM0005", "999999", "", 1).status == FAILED  # no such product there
    assert adapter.submit("KM0006", "CMCC-10", "", 1).status == FAILED  # a code that is no product id
    assert factories.wallet(upstream.agent) == 50_000
    # The upstream disabled our agent there: it refuses (403) and creates nothing.
    upstream.agent.active = False
    db.session.commit()
    disabled = adapter.submit("KM0016", str(upstream.card.id), "", 1)
    assert disabled.status == FAILED and "forbidden" in disabled.message


def test_kameng_refused_credentials_and_an_unreachable_upstream_are_unreachable(app, upstream):
    with pytest.raises(UpstreamUnreachable, match="401"):
        kameng_adapter(upstream, secret="0" * 64).submit("KM0007", str(upstream.card.id), "", 1)
    with pytest.raises(UpstreamUnreachable, match="401"):
        kameng_adapter(upstream, secret="0" * 64).query_balance()
    with pytest.raises(UpstreamUnreachable):
        kameng_adapter(upstream, endpoint="http://127.0.0.1:9").query("KM0007")
    assert kameng_adapter(upstream).query("KM0007").status == NOT_FOUND


def test_kameng_balance_and_stock(app, upstream):
    empty = upstream.f.product(face_price=5_000, cost=4_000)
    adapter = kameng_adapter(upstream, endpoint=upstream.url + "/open/v1/")
    assert adapter.query_balance() == 50_000
    stock = {item.code: item for item in adapter.list_stock()}
    card = stock[str(upstream.card.id)]
    assert (card.price, card.stock, card.available, card.extra["kind"]) == (9_000, None, True, "card")
    assert (stock[str(empty.id)].price, stock[str(empty.id)].stock) == (4_500, 0)
    adapter.submit("KM0008", str(upstream.card.id), "", 3)
    assert {i.code: i.stock for i in adapter.list_stock()}[str(upstream.card.id)] == 0


def test_kameng_callbacks_verify_and_fetch_the_card_secrets(app, upstream, receiver):
    path = "/supplier/notify/9"
    adapter = kameng_adapter(upstream, notify_url=receiver.url(path))
    result = adapter.submit("KM0009", str(upstream.card.id), "", 1)
    [callback] = receiver.wait_for(1)  # the upstream sends it from the outbox once the order is delivered
    assert callback["path"] == path
    parsed = adapter.parse_callback(callback["headers"], callback["body"])
    assert (parsed.order_no, parsed.status, parsed.trade_no) == ("KM0009", SUCCESS, result.trade_no)
    assert parsed.card_secrets == result.card_secrets  # not in the callback: fetched with a signed query
    assert b"card_secrets" not in callback["body"]

    forged = callback["body"].replace(b"KM0009", b"KM0010")
    with pytest.raises(InvalidCallback):
        adapter.parse_callback(callback["headers"], forged)
    # Signed by another agent's key at the upstream, or with a stale timestamp: refused.
    other_key, other_secret = new_key(upstream.f.agent())
    for headers in (signing.signed_headers(other_key.app_key, other_secret, "POST", path, forged),
                    signing.signed_headers(upstream.key.app_key, upstream.secret, "POST", path, forged,
                                           now=int(time.time()) - 600)):
        with pytest.raises(InvalidCallback):
            adapter.parse_callback(headers, forged)
    # A well-signed callback for another of the upstream's statuses maps like a query does.
    body = json.loads(callback["body"])
    body.update(notified_status="refunded", status="refunded")
    raw = json.dumps(body).encode()
    headers = signing.signed_headers(upstream.key.app_key, upstream.secret, "POST", path, raw)
    assert adapter.parse_callback(headers, raw).status == FAILED


def test_kameng_supplier_row_through_the_registry(app, upstream):
    supplier = catalog.create_supplier("上游卡盟")
    supplier.protocol, supplier.endpoint, supplier.app_key = "kameng", upstream.url, upstream.key.app_key
    supplier.secret_enc = crypto.encrypt(upstream.secret)
    db.session.commit()
    adapter = get_adapter(supplier, base_url="https://us.example.com")
    assert adapter.protocol == "kameng"
    assert adapter.connection.notify_url == f"https://us.example.com/supplier/notify/{supplier.id}"
    assert adapter.query_balance() == 50_000


def test_kameng_docking_a_direct_product_whose_upstream_uses_the_simulator(app, upstream, supplier_sim):
    """The upstream Kameng sells a direct top-up it sources from the simulator; we dock it by product id."""
    direct = upstream.f.product(kind="direct", face_price=1_000, cost=985)
    sim_supplier(supplier_sim, mappings={direct.id: ("CMCC-10", 985)})
    adapter = kameng_adapter(upstream)
    result = adapter.submit("KM0020", str(direct.id), PHONE, 1)
    assert result.status in (PROCESSING, SUCCESS) and result.trade_no and result.card_secrets == ()
    deadline = time.monotonic() + 10
    while result.status == PROCESSING and time.monotonic() < deadline:  # the upstream's own recharge job
        time.sleep(0.1)
        result = adapter.query("KM0020")
    assert result.status == SUCCESS
    [credited] = [o for o in supplier_sim.orders().values() if o["account"] == PHONE]
    assert credited["credits"] == 1 and credited["code"] == "CMCC-10"
    assert factories.wallet(upstream.agent) == 50_000 - 900
    # Without an account the upstream refuses the direct order outright.
    assert adapter.submit("KM0021", str(direct.id), "", 1).status == FAILED

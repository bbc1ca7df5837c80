"""Order callbacks to notify_url: signed like requests, sent through the outbox (inline or a real RQ worker on real
Redis), retried with backoff by the sweeper, never lost when Redis is down, and visible to the agent and admins.

A small http.server in a thread plays the reseller: it records every POST and answers a scripted list of statuses.
"""
from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from app.clock import utcnow
from app.extensions import db
from app.openapi import signing
from app.openapi.callbacks import BACKOFF
from app.openapi.models import CallbackAttempt
from app.orders.models import Order
from app.outbox.models import OutboxMessage
from tests.openapi_helpers import Receiver, in_fresh_context, new_key, signed_call
from workers import jobs
from workers.runner import run_worker

ORDERS = "/open/v1/orders"


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def world(f):
    agent = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=9000))
    product = f.product(face_price=10_000, cost=8_000, secrets=10)
    key, secret = new_key(agent)

    class World:
        pass

    w = World()
    w.agent, w.product, w.key, w.secret, w.app_key = agent, product, key, secret, key.app_key
    return w


@pytest.fixture
def with_redis(app, redis_url):
    """The fixture app with REDIS_URL set (jobs go to RQ on the test Redis db); restored afterwards."""
    app.config["REDIS_URL"] = redis_url
    try:
        yield redis_url
    finally:
        app.config["REDIS_URL"] = None


def place(client, w, notify_url: str, out_trade_no: str | None = None) -> dict:
    body = {"out_trade_no": out_trade_no or uuid.uuid4().hex, "product_id": w.product.id, "quantity": 1,
            "notify_url": notify_url}
    r = signed_call(client, w.key, w.secret, "POST", ORDERS, body)
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def work() -> None:
    """A real RQ worker on the high queue, in burst mode, inside the app (as `flask kameng worker` runs it)."""
    run_worker(["high"], burst=True, with_cron=False)
    db.session.rollback()
    db.session.expire_all()


def message_for(order_no: str) -> OutboxMessage:
    db.session.rollback()
    db.session.expire_all()
    return db.session.scalar(select(OutboxMessage).where(OutboxMessage.key == f"order:{order_no}:notify:delivered"))


def attempts_for(order_no: str) -> list[CallbackAttempt]:
    db.session.rollback()
    db.session.expire_all()
    return list(db.session.scalars(select(CallbackAttempt).join(Order, Order.id == CallbackAttempt.order_id)
                                   .where(Order.order_no == order_no).order_by(CallbackAttempt.attempt)))


def make_due(message_id: int) -> None:
    db.session.execute(update(OutboxMessage).where(OutboxMessage.id == message_id)
                       .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()


def verify_callback(req: dict, w, order: dict, path: str = "/notify/kameng") -> dict:
    """The POST is signed with the key's secret over (POST, path without query, X-Timestamp, X-Nonce, body)."""
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert req["method"] == "POST" and urlsplit(req["path"]).path == path
    assert headers["x-app-key"] == w.app_key
    assert headers["content-type"] == "application/json"
    assert 16 <= len(headers["x-nonce"]) <= 64
    assert abs(int(headers["x-timestamp"]) - time.time()) < 120
    expected = signing.sign(w.secret, "POST", path, headers["x-timestamp"], headers["x-nonce"], req["body"])
    assert headers["x-signature"] == expected
    body = json.loads(req["body"])
    assert body["order_no"] == order["order_no"] and body["out_trade_no"] == order["out_trade_no"]
    assert body["status"] == "delivered" and body["notified_status"] == "delivered"
    assert body["amount"] == order["amount"] == 9_000
    # Card secrets never travel in a callback: the reseller fetches them with a signed GET.
    assert "card_secrets" not in body
    for secret in order["card_secrets"]:
        assert secret.encode() not in req["body"]
    return body


# --- inline (no Redis) ---------------------------------------------------------------------------------------

def test_inline_callback_is_sent_right_after_the_request(app, f, client, world, receiver):
    assert app.config["REDIS_URL"] is None
    order = place(client, world, receiver.url("/notify/kameng?shop=7"))
    # Inline: sent in the request's teardown, so it has arrived when the response is back.
    assert len(receiver.requests) == 1
    verify_callback(receiver.requests[0], world, order)
    message = message_for(order["order_no"])
    assert (message.status, message.attempts) == ("done", 1)
    [attempt] = attempts_for(order["order_no"])
    assert attempt.succeeded and attempt.http_status == 200 and attempt.next_attempt_at is None
    assert attempt.agent_id == world.agent.id and attempt.url == receiver.url("/notify/kameng?shop=7")
    # Replaying the request does not send the callback again.
    body = {"out_trade_no": order["out_trade_no"], "product_id": world.product.id, "quantity": 1,
            "notify_url": receiver.url("/notify/kameng?shop=7")}
    assert signed_call(client, world.key, world.secret, "POST", ORDERS, body).status_code == 200
    assert jobs.sweep_outbox() == 0
    assert len(receiver.requests) == 1


def test_inline_failure_is_retried_by_the_sweeper(app, f, client, world, receiver):
    receiver.statuses = [503]
    order = place(client, world, receiver.url())
    assert len(receiver.requests) == 1
    message = message_for(order["order_no"])
    assert (message.status, message.attempts, message.last_error) == ("pending", 1, "HTTP 503")
    assert jobs.sweep_outbox() == 0  # not due for 15 s
    make_due(message.id)
    result = app.test_cli_runner().invoke(args=["kameng", "outbox-sweep"])
    assert result.exit_code == 0 and "dispatched 1 message" in result.stdout
    assert len(receiver.requests) == 2
    verify_callback(receiver.requests[1], world, order)
    assert message_for(order["order_no"]).status == "done"


def test_orders_without_notify_url_write_no_callback(app, f, client, world, receiver):
    body = {"out_trade_no": "plain-1", "product_id": world.product.id, "quantity": 1}
    assert signed_call(client, world.key, world.secret, "POST", ORDERS, body).status_code == 201
    assert db.session.scalar(select(OutboxMessage.id)) is None
    assert receiver.requests == []


def test_callbacks_to_private_addresses_are_refused_when_private_is_not_allowed(app, f, client, world, receiver):
    app.config["OUTBOUND_ALLOW_PRIVATE"] = False
    try:
        order = place(client, world, receiver.url())
    finally:
        app.config["OUTBOUND_ALLOW_PRIVATE"] = True
    assert receiver.requests == []
    [attempt] = attempts_for(order["order_no"])
    assert not attempt.succeeded and attempt.http_status is None
    assert attempt.error == "destination refused: loopback address 127.0.0.1"


# --- a real RQ worker on real Redis --------------------------------------------------------------------------

def test_worker_delivers_a_signed_callback(app, f, client, world, receiver, with_redis):
    order = place(client, world, receiver.url())
    assert receiver.requests == []  # queued, not sent by the web request
    assert message_for(order["order_no"]).status == "pending"
    work()
    [req] = receiver.wait_for(1)
    verify_callback(req, world, order)
    message = message_for(order["order_no"])
    assert (message.status, message.attempts) == ("done", 1) and message.finished_at is not None
    work()
    assert jobs.sweep_outbox() == 0
    work()
    assert len(receiver.requests) == 1


def test_failed_callback_is_retried_with_backoff_then_done(app, f, client, world, receiver, with_redis):
    receiver.statuses = [500]
    order = place(client, world, receiver.url())
    work()
    assert len(receiver.wait_for(1)) == 1
    [first] = attempts_for(order["order_no"])
    assert (first.attempt, first.http_status, first.succeeded) == (1, 500, False)
    expected = first.created_at + timedelta(seconds=15)
    assert abs((first.next_attempt_at - expected).total_seconds()) < 2
    assert abs((first.next_attempt_at - utcnow()).total_seconds() - 15) < 5
    message = message_for(order["order_no"])
    assert (message.status, message.attempts) == ("pending", 1)
    assert abs((message.next_attempt_at - first.next_attempt_at).total_seconds()) < 2

    # Not due yet: the sweeper leaves it, the worker finds nothing.
    assert jobs.sweep_outbox() == 0
    work()
    assert len(receiver.requests) == 1

    make_due(message.id)
    result = app.test_cli_runner().invoke(args=["kameng", "outbox-sweep"])
    assert result.exit_code == 0 and "dispatched 1 message" in result.stdout, result.output
    work()
    requests_seen = receiver.wait_for(2)
    assert len(requests_seen) == 2
    verify_callback(requests_seen[1], world, order)
    attempts = attempts_for(order["order_no"])
    assert [(a.attempt, a.http_status, a.succeeded) for a in attempts] == [(1, 500, False), (2, 200, True)]
    assert attempts[1].next_attempt_at is None
    assert message_for(order["order_no"]).status == "done"

    # Done means done: later sweeps (even with the clock moved) dispatch nothing and nothing is sent.
    make_due(message.id)
    assert jobs.sweep_outbox() == 0
    work()
    assert len(receiver.requests) == 2 and len(attempts_for(order["order_no"])) == 2


def test_seven_failures_mark_the_callback_failed(app, f, client, world, receiver, with_redis):
    receiver.default = 500
    order = place(client, world, receiver.url())
    message_id = message_for(order["order_no"]).id
    for n in range(1, 8):
        if n > 1:
            make_due(message_id)
            assert jobs.sweep_outbox() == 1
        work()
        assert len(receiver.wait_for(n)) == n
        attempt = attempts_for(order["order_no"])[-1]
        assert (attempt.attempt, attempt.http_status, attempt.succeeded) == (n, 500, False)
        message = message_for(order["order_no"])
        if n <= len(BACKOFF):
            delay = (attempt.next_attempt_at - attempt.created_at).total_seconds()
            assert abs(delay - BACKOFF[n - 1].total_seconds()) < 2, (n, delay)
            assert message.status == "pending"
        else:
            assert attempt.next_attempt_at is None
            assert (message.status, message.attempts, message.last_error) == ("failed", 7, "HTTP 500")
    assert [b.total_seconds() for b in BACKOFF] == [15, 60, 300, 1800, 7200, 21600]
    make_due(message_id)
    assert jobs.sweep_outbox() == 0
    work()
    assert len(receiver.requests) == 7 and len(attempts_for(order["order_no"])) == 7


def test_redis_outage_loses_nothing(app, f, client, world, receiver, redis_url):
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        order = place(client, world, receiver.url())
        assert order["status"] == "delivered"
        message = message_for(order["order_no"])
        assert message.status == "pending" and message.attempts == 0
        assert jobs.sweep_outbox() == 1  # tries again, Redis still down, still pending
        assert message_for(order["order_no"]).status == "pending"
        assert receiver.requests == []
    finally:
        app.config["REDIS_URL"] = redis_url
    try:
        result = app.test_cli_runner().invoke(args=["kameng", "outbox-sweep"])
        assert result.exit_code == 0 and "dispatched 1 message" in result.stdout, result.output
        work()
        [req] = receiver.wait_for(1)
        verify_callback(req, world, order)
        assert message_for(order["order_no"]).status == "done"
    finally:
        app.config["REDIS_URL"] = None


def test_worker_cli_delivers(app, f, client, world, receiver, with_redis):
    order = place(client, world, receiver.url())
    result = app.test_cli_runner().invoke(args=["kameng", "worker", "--burst", "--queues", "high", "--no-cron"])
    assert result.exit_code == 0, result.output
    [req] = receiver.wait_for(1)
    verify_callback(req, world, order)
    assert message_for(order["order_no"]).status == "done"


# --- who sees the attempts -----------------------------------------------------------------------------------

def test_attempts_are_visible_to_the_agent_and_admins_only(app, f, client, world, receiver):
    receiver.statuses = [500]
    order = place(client, world, receiver.url())
    portal, other, screens = app.test_client(), app.test_client(), app.test_client()
    stranger = f.agent()
    admin = f.user(role="Admin")
    # Each client's calls in their own app context, as separate server requests are (see in_fresh_context).
    in_fresh_context(app, f.login, portal, world.agent.name)
    in_fresh_context(app, f.login, other, stranger.name)
    in_fresh_context(app, f.login, screens, admin.username)

    page = in_fresh_context(app, portal.get, "/portal/api-keys/").get_data(as_text=True)
    assert order["order_no"] in page and "500" in page
    r = in_fresh_context(app, portal.get, "/portal/my-callbacks/list/")
    assert r.status_code == 200 and order["order_no"] in r.get_data(as_text=True)

    assert order["order_no"] not in in_fresh_context(app, other.get, "/portal/api-keys/").get_data(as_text=True)
    r = in_fresh_context(app, other.get, "/portal/my-callbacks/list/")
    assert r.status_code == 200 and order["order_no"] not in r.get_data(as_text=True)
    assert in_fresh_context(app, other.get, "/callback-attempts/list/").status_code in (302, 403)
    assert in_fresh_context(app, portal.get, "/callback-attempts/list/").status_code in (302, 403)

    r = in_fresh_context(app, screens.get, "/callback-attempts/list/")
    assert r.status_code == 200 and order["order_no"] in r.get_data(as_text=True)

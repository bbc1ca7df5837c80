"""The payment gateway simulators (app/payments/simulators) and the app itself over real HTTP on 127.0.0.1.

    from tests import channel_sim_helpers as csh

    live = csh.live            # fixture: the app served on a free port; PUBLIC_BASE_URL points at it
    gateway = csh.gateway      # fixture factory: gateway("alipay") starts that simulator and configures the channel

`live` serves the test's app (PostgreSQL) in a threaded werkzeug server, so a simulator's notifications reach
/pay/notify/<channel> and /pay/refund-notify/<channel> like a gateway's would. `gateway(channel)` starts the
simulator, registers newly generated merchant keys with it (merchant_settings), saves and enables the channel,
and returns a GatewayHandle with the simulator's control API (see app/payments/simulators/__init__.py).
"""
from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest
import requests
from sqlalchemy import select

from app.extensions import db
from app.network.simulators import serve
from app.orders.models import Order
from app.payments import service as payments
from app.payments.models import ChannelOrder, Refund
from app.payments.simulators import merchant_settings, simulator_for

PASSWORD = "order-pass-123"


class GatewayHandle:
    def __init__(self, channel: str, url: str, sim):
        self.channel, self.url, self.sim = channel, url, sim

    def _call(self, method: str, path: str, payload: dict | None = None, ok=(200,)):
        response = requests.request(method, self.url + path, json=payload, timeout=15)
        assert response.status_code in ok, (path, response.status_code, response.text)
        return response.json() if response.content else None

    def pay(self, out_trade_no: str, **kw) -> dict:
        return self._call("POST", f"/_sim/pay/{out_trade_no}", kw)

    def pay_response(self, out_trade_no: str, **kw) -> requests.Response:
        return requests.post(f"{self.url}/_sim/pay/{out_trade_no}", json=kw, timeout=15)

    def behave(self, **kw) -> dict:
        return self._call("POST", "/_sim/behaviour", kw)

    def refunds(self) -> list[dict]:
        return self._call("GET", "/_sim/refunds")

    def orders(self) -> list[dict]:
        return self._call("GET", "/_sim/orders")

    def plant(self, out_trade_no: str, amount: int) -> dict:
        return self._call("POST", "/_sim/bill/plant", {"out_trade_no": out_trade_no, "amount": amount})


@pytest.fixture
def live(app):
    server, url = serve(app)
    before = app.config.get("PUBLIC_BASE_URL")
    app.config["PUBLIC_BASE_URL"] = url
    try:
        yield url
    finally:
        app.config["PUBLIC_BASE_URL"] = before
        server.shutdown()


@pytest.fixture
def gateway(app):
    servers = []

    def start(channel: str, **settings_override) -> GatewayHandle:
        sim = simulator_for(channel)
        server, url = serve(sim)
        servers.append(server)
        settings = merchant_settings(channel, url)
        settings.update({"timeout": 2, **settings_override})
        payments.save_channel(channel, True, settings)
        return GatewayHandle(channel, url, sim)

    yield start
    for server in servers:
        server.shutdown()


def checkout(base: str, product, channel: str, contact: str = "13800138000", **extra) -> dict:
    """POST /shop/api/orders over HTTP, as a buyer's page or mini-program does; returns the 201 answer."""
    body = {"product_id": product.id, "quantity": 1, "contact": contact, "query_password": PASSWORD,
            "channel": channel, **extra}
    response = requests.post(f"{base}/shop/api/orders", json=body, timeout=15)
    assert response.status_code == 201, response.text
    return response.json()


def open_pay_url(pay_url: str, order_no: str) -> requests.Response:
    """The buyer's browser opens the pay URL; a page that posts a signed form to the gateway (UnionPay) is followed
    the way the browser's script does."""
    response = requests.get(pay_url, timeout=15, allow_redirects=False)
    db.session.rollback()
    co = db.session.scalar(select(ChannelOrder).where(ChannelOrder.out_trade_no == order_no))
    if co is not None and co.form:
        assert response.status_code == 200 and 'id="pay-form"' in response.text
        return requests.post(co.pay_url, data=json.loads(co.form), timeout=15, allow_redirects=False)
    return response


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        db.session.rollback()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


def order_status(order_no: str) -> str:
    db.session.rollback()
    return db.session.scalar(select(Order.status).where(Order.order_no == order_no))


def refund_of(order_no: str) -> Refund | None:
    db.session.rollback()
    return db.session.scalar(select(Refund).join(Order, Order.id == Refund.order_id)
                             .where(Order.order_no == order_no).order_by(Refund.id.desc()).limit(1))


@contextlib.contextmanager
def served_with_own_base_url(pg_url: str, **overrides):
    """The real app (CSRF on) served from a thread, its PUBLIC_BASE_URL its own address (so the channels' notify
    URLs reach it); yields that base URL."""
    from werkzeug.serving import make_server

    from tests.conftest import make_app

    served_app = make_app(pg_url, WTF_CSRF_ENABLED=True, **overrides)
    server = make_server("127.0.0.1", 0, served_app, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    served_app.config["PUBLIC_BASE_URL"] = base
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        with served_app.app_context():
            from app.extensions import db

            db.session.remove()
            db.engine.dispose()

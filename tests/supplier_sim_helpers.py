"""The upstream supplier simulator over real HTTP for tests, and suppliers connected to it.

Use it from any test module:

    from tests import supplier_sim_helpers
    from tests.supplier_sim_helpers import sim_supplier

    supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture; an assignment, so ruff's F811 stays quiet

    def test_x(app, supplier_sim):
        supplier_sim.behave("CMCC-10", mode="pending", pending_polls=1)
        supplier = sim_supplier(supplier_sim, mappings={product.id: ("CMCC-10", 980)})
        ...
        assert supplier_sim.orders()[order.order_no]["credits"] == 1

`supplier_sim` (function-scoped) starts a fresh `SupplierSimulator` (app/suppliers/simulator.py documents the
protocol, modes and defaults) on 127.0.0.1:<free port> in a threaded werkzeug server, and yields a `SimHandle`:

- `.url`: the base URL (the Supplier's endpoint); `.key`: the signing secret; `.app_key`: our account there.
- `.sim`: the SupplierSimulator object itself (its state, for assertions that need more).
- `.behave(code="*", **kw)`: POST /_sim/behaviour; kw among mode, latency_ms, pending_polls, final, answer,
  complete_after_ms, callback, callback_delay_ms, duplicate_callbacks, timeout_ms. Returns the stored
  behaviour. Omitted keys take the defaults (mode success, pending_polls 2, final success, callback "final",
  callback_delay_ms 0, duplicate_callbacks 0 extra copies, timeout_ms 3000).
- `.set_stock(code, stock, price=None)`: POST /_sim/stock (stock None = unlimited; creates unknown codes).
- `.set_balance(fen)`: POST /_sim/balance.  `.balance()`: the simulator's balance now, fen.
- `.orders()`: {order_no: {order_no, trade_no, code, account, quantity, amount, status, message, credits,
  submits, queries, callbacks_sent, callback_answers, notify_url}} from GET /_sim/orders.
- `.wait_callbacks(order_no, count, timeout=10)`: wait until that many callbacks were sent (and answered) for
  the order; returns the order's entry.
- `.reset()`: POST /_sim/reset.
- `.make_supplier(name=None, priority=100, mappings=None, **kw)`: same as `sim_supplier(handle, ...)`.

`sim_supplier(sim, name=None, priority=100, mappings=None, timeout_seconds=2, balance=None, key=None,
service_fee_bp=0, low_balance_threshold=0)` creates and commits a Supplier with protocol "simulator", endpoint
sim.url, app_key sim.app_key, secret_enc = app.crypto.encrypt(key or sim.key) (pass a wrong `key` to test
refused signatures), its ledger payable account (catalog.create_supplier opens it), and one active
SupplierProduct per `mappings` entry {product_id: (upstream_code, cost_fen)} or {product_id: (code, cost,
mapping_priority)}. Returns the Supplier.

Seeded codes and prices (fen): CMCC-10 985, CMCC-30 2955, CMCC-50 4925, CMCC-100 9850, CUCC-50 4930, CTCC-50 4930
(stock unlimited; the account must be an 11-digit mobile number like "13800138000"), TENCENT-QB-10 960,
TENCENT-QB-30 2880 (stock 500), IQIYI-MONTH 1500, YOUKU-MONTH 1450 (stock 200). Balance 100,000,000 fen.
"""
from __future__ import annotations

import time

import pytest
import requests

from app import crypto
from app.catalog import service as catalog
from app.extensions import db
from app.network.simulators import serve
from app.suppliers.models import SupplierProduct
from app.suppliers.simulator import SupplierSimulator

SIM_KEY = "supplier-sim-secret-0123456789"
SIM_APP_KEY = "kameng-test"


class SimHandle:
    def __init__(self, sim: SupplierSimulator, url: str):
        self.sim = sim
        self.url = url
        self.key = sim.key
        self.app_key = sim.app_key

    def _post(self, path: str, payload: dict) -> dict:
        response = requests.post(self.url + path, json=payload, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def _get(self, path: str) -> dict:
        response = requests.get(self.url + path, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def behave(self, code: str = "*", **kw) -> dict:
        return self._post("/_sim/behaviour", {"code": code, **kw})

    def set_stock(self, code: str, stock: int | None, price: int | None = None) -> dict:
        return self._post("/_sim/stock", {"code": code, "stock": stock, "price": price})

    def set_balance(self, fen: int) -> dict:
        return self._post("/_sim/balance", {"balance": fen})

    def balance(self) -> int:
        return self._get("/_sim/state")["balance"]

    def orders(self) -> dict[str, dict]:
        return {o["order_no"]: o for o in self._get("/_sim/orders")["orders"]}

    def wait_callbacks(self, order_no: str, count: int, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            order = self.orders().get(order_no)
            if order is not None and order["callbacks_sent"] >= count:
                return order
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} callback(s) for {order_no} not sent within {timeout}s: {order}")
            time.sleep(0.05)

    def reset(self) -> dict:
        return self._post("/_sim/reset", {})

    def make_supplier(self, name: str | None = None, priority: int = 100, mappings: dict | None = None, **kw):
        return sim_supplier(self, name=name, priority=priority, mappings=mappings, **kw)


def sim_supplier(sim: SimHandle, name: str | None = None, priority: int = 100, mappings: dict | None = None,
                 timeout_seconds: int = 2, balance: int | None = None, key: str | None = None,
                 service_fee_bp: int = 0, low_balance_threshold: int = 0):
    """A Supplier connected to the simulator, with its payable account and product mappings. Commits."""
    from tests.factories import unique

    supplier = catalog.create_supplier(name or unique("上游"), service_fee_bp)
    supplier.protocol = "simulator"
    supplier.endpoint = sim.url
    supplier.app_key = sim.app_key
    supplier.secret_enc = crypto.encrypt(key or sim.key)
    supplier.priority = priority
    supplier.timeout_seconds = timeout_seconds
    supplier.balance = balance
    supplier.low_balance_threshold = low_balance_threshold
    for product_id, mapping in (mappings or {}).items():
        code, cost, *rest = mapping
        db.session.add(SupplierProduct(supplier_id=supplier.id, product_id=product_id, upstream_code=code,
                                       cost=cost, priority=rest[0] if rest else 100, active=True))
    db.session.commit()
    return supplier


@pytest.fixture
def supplier_sim():
    sim = SupplierSimulator(SIM_KEY, app_key=SIM_APP_KEY)
    server, url = serve(sim)
    try:
        yield SimHandle(sim, url)
    finally:
        sim.close()
        server.shutdown()
        server.server_close()

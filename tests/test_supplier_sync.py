"""Stock sync (库存同步) against the supplier simulator over HTTP: balances, stock and prices copied onto suppliers
and mappings; a direct product out at every supplier is unavailable in every listing and comes back with stock;
low-balance and restock alerts raised once and resolved; one unreachable supplier never stops the others; the
CLI, the scheduled job (real Redis, real worker) and the schedule entry."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app.catalog.models import StockAlert, Supplier
from app.extensions import db
from app.suppliers import sync
from app.suppliers.models import SupplierAlert, SupplierProduct
from tests import supplier_sim_helpers
from tests.openapi_helpers import new_key, signed_call
from tests.supplier_sim_helpers import sim_supplier

supplier_sim = supplier_sim_helpers.supplier_sim


def _mapping(supplier, product) -> SupplierProduct:
    db.session.expire_all()
    return db.session.scalar(select(SupplierProduct).where(SupplierProduct.supplier_id == supplier.id,
                                                           SupplierProduct.product_id == product.id))


def _direct(f, name=None, threshold=5):
    return f.product(name=name, kind="direct", face_price=1000, cost=950, low_stock_threshold=threshold)


def _open_alerts(model, **where):
    db.session.expire_all()
    query = select(model).where(model.resolved_at.is_(None))
    for column, value in where.items():
        query = query.where(getattr(model, column) == value)
    return list(db.session.scalars(query))


def test_cli_copies_balance_stock_and_prices_and_zeroes_codes_no_longer_listed(app, f, supplier_sim):
    qb, phone, gone = _direct(f, "Q币 10"), _direct(f, "话费 10"), _direct(f, "下架的商品")
    supplier_sim.set_stock("TENCENT-QB-10", 120, 970)
    supplier_sim.set_balance(123_456)
    supplier = sim_supplier(supplier_sim, name="模拟上游甲", mappings={qb.id: ("TENCENT-QB-10", 960),
                                                                     phone.id: ("CMCC-10", 985),
                                                                     gone.id: ("NO-SUCH-CODE", 100)})
    result = app.test_cli_runner().invoke(args=["kameng", "supplier-sync"])
    assert result.exit_code == 0, result.output
    assert "模拟上游甲" in result.output and "balance ¥1,234.56" in result.output
    assert "3 mappings (1 out of stock), ok" in result.output

    assert (_mapping(supplier, qb).upstream_stock, _mapping(supplier, qb).upstream_price) == (120, 970)
    assert _mapping(supplier, qb).synced_at is not None
    assert (_mapping(supplier, phone).upstream_stock, _mapping(supplier, phone).upstream_price) == (None, 985)
    assert _mapping(supplier, gone).upstream_stock == 0  # the upstream no longer lists the code
    assert _mapping(supplier, qb).cost == 960  # our configured cost is ours: the sync reports, it does not reprice
    supplier = db.session.get(Supplier, supplier.id)
    assert supplier.balance == 123_456 and supplier.balance_synced_at is not None


def _listing_stock(app, f, agent, key, secret, product_id) -> dict[str, bool]:
    """in_stock of one product as the Open API, the storefront API and the portal buy page show it."""
    client = app.test_client()
    api = signed_call(client, key, secret, "GET", "/open/v1/products").get_json()["products"]
    shop = app.test_client().get("/shop/api/products").get_json()["products"]
    page = f.login(app.test_client(), agent.user.username).get("/portal/buy").text
    row = page[page.index(f'data-product-id="{product_id}"'):]
    row = row[:row.index("</tr>")]
    return {"openapi": next(p["in_stock"] for p in api if p["id"] == product_id),
            "shop": next(p["in_stock"] for p in shop if p["id"] == product_id),
            "portal": "缺货" not in row}


def test_product_out_at_every_supplier_is_unavailable_everywhere_until_restocked(app, f, supplier_sim):
    agent = f.agent(balance=100_000)
    key, secret = new_key(agent)
    product = _direct(f, "爱奇艺月卡")
    first = sim_supplier(supplier_sim, name="上游一", mappings={product.id: ("IQIYI-MONTH", 1500)})
    second = sim_supplier(supplier_sim, name="上游二", mappings={product.id: ("YOUKU-MONTH", 1450)})
    sync.sync_all()
    assert _listing_stock(app, f, agent, key, secret, product.id) == {"openapi": True, "shop": True, "portal": True}

    supplier_sim.set_stock("IQIYI-MONTH", 0)
    sync.sync_all()
    assert _mapping(first, product).upstream_stock == 0 and _mapping(second, product).upstream_stock == 200
    assert _listing_stock(app, f, agent, key, secret, product.id)["openapi"] is True  # one supplier still has it

    supplier_sim.set_stock("YOUKU-MONTH", 0)
    report = sync.sync_all()
    assert report["failed"] == 0
    assert _listing_stock(app, f, agent, key, secret, product.id) == {"openapi": False, "shop": False,
                                                                      "portal": False}
    # the admin product list says so too
    admin = f.login(app.test_client(), f.user(f.unique("admin"), role="Admin").username)
    page = admin.get("/products/list/").text
    assert "无可用货源" in page[page.index("爱奇艺月卡"):]

    supplier_sim.set_stock("YOUKU-MONTH", 3)
    sync.sync_all()
    assert _listing_stock(app, f, agent, key, secret, product.id) == {"openapi": True, "shop": True, "portal": True}
    page = admin.get("/products/list/").text
    assert "有货源" in page[page.index("爱奇艺月卡"):]


def test_low_balance_alert_raised_once_and_resolved(app, f, supplier_sim):
    product = _direct(f)
    supplier = sim_supplier(supplier_sim, mappings={product.id: ("CMCC-10", 985)}, low_balance_threshold=50_000)
    supplier_sim.set_balance(20_000)
    report = sync.sync_all()
    assert report["balance_alerts"] == {"raised": 1, "resolved": 0}
    sync.sync_all()  # still low: the same alert, not a second one
    alerts = _open_alerts(SupplierAlert, supplier_id=supplier.id)
    assert len(alerts) == 1 and (alerts[0].value, alerts[0].threshold, alerts[0].kind) == (20_000, 50_000,
                                                                                           "low_balance")
    supplier_sim.set_balance(10_000)
    sync.sync_all()
    assert [a.value for a in _open_alerts(SupplierAlert, supplier_id=supplier.id)] == [10_000]

    supplier_sim.set_balance(80_000)
    report = sync.sync_all()
    assert report["balance_alerts"] == {"raised": 0, "resolved": 1}
    assert _open_alerts(SupplierAlert, supplier_id=supplier.id) == []
    assert db.session.scalar(select(SupplierAlert.resolved_at).where(SupplierAlert.supplier_id == supplier.id))
    # the product stays available meanwhile: a low balance warns, it does not stop sales above the cost
    admin = f.login(app.test_client(), f.user(f.unique("admin"), role="Admin").username)
    assert "余额不足" in admin.get("/supplier-alerts/list/").text


def test_low_stock_alert_for_a_direct_product_across_its_suppliers(app, f, supplier_sim):
    product = _direct(f, threshold=10)
    unlimited = _direct(f, threshold=10)
    supplier_sim.set_stock("TENCENT-QB-10", 4)
    supplier_sim.set_stock("TENCENT-QB-30", 3)
    sim_supplier(supplier_sim, mappings={product.id: ("TENCENT-QB-10", 960), unlimited.id: ("CMCC-10", 985)})
    sim_supplier(supplier_sim, mappings={product.id: ("TENCENT-QB-30", 960)})
    report = sync.sync_all()
    assert report["stock_alerts"]["raised"] == 1
    alerts = _open_alerts(StockAlert, product_id=product.id)
    assert [(a.available, a.threshold) for a in alerts] == [(7, 10)]  # 4 + 3 across both suppliers
    assert _open_alerts(StockAlert, product_id=unlimited.id) == []  # unlimited upstream stock never alerts

    sync.sync_all()
    assert len(_open_alerts(StockAlert, product_id=product.id)) == 1
    supplier_sim.set_stock("TENCENT-QB-30", 30)
    report = sync.sync_all()
    assert report["stock_alerts"]["resolved"] == 1 and _open_alerts(StockAlert, product_id=product.id) == []


def test_an_unreachable_supplier_keeps_its_values_and_does_not_stop_the_others(app, f, supplier_sim):
    product = _direct(f)
    dead = sim_supplier(supplier_sim, name="失联上游", priority=1, mappings={product.id: ("CMCC-10", 985)},
                        timeout_seconds=1)
    dead.endpoint = "http://127.0.0.1:9"  # nothing listens on the discard port
    dead.balance = 77_700
    db.session.commit()
    wrong_key = sim_supplier(supplier_sim, name="密钥错误", mappings={product.id: ("CMCC-10", 985)}, key="wrong")
    mapping = _mapping(dead, product)
    mapping.upstream_stock = 7
    db.session.commit()
    good = sim_supplier(supplier_sim, name="正常上游", mappings={product.id: ("TENCENT-QB-10", 960)})

    result = app.test_cli_runner().invoke(args=["kameng", "supplier-sync"])
    assert result.exit_code == 1  # the CLI says something failed
    assert "失联上游" in result.output and "密钥错误" in result.output and "FAILED" in result.output
    assert "suppliers synced: 1, failed: 2" in result.output
    assert _mapping(dead, product).upstream_stock == 7 and _mapping(dead, product).synced_at is None
    assert db.session.get(Supplier, dead.id).balance == 77_700
    assert _mapping(good, product).upstream_stock == 500 and _mapping(good, product).synced_at is not None
    assert db.session.get(Supplier, good.id).balance == 100_000_000
    assert _mapping(wrong_key, product).synced_at is None


def test_scheduled_job_runs_the_sync_on_a_real_worker(app, f, supplier_sim, redis_url):
    from workers import jobs
    from workers.queues import get_queue
    from workers.runner import run_worker
    from workers.schedule import PERIODIC

    entry = next(p for p in PERIODIC if p.name == "supplier-sync")
    assert entry.func is jobs.sync_suppliers and app.config[entry.interval_setting] == 300

    product = _direct(f)
    supplier = sim_supplier(supplier_sim, mappings={product.id: ("TENCENT-QB-10", 960)})
    app.config["REDIS_URL"] = redis_url
    try:
        job = get_queue("low").enqueue(jobs.sync_suppliers, job_id="supplier-sync-test")
        run_worker(["low"], burst=True, with_cron=False)
        job.refresh()
        assert job.get_status() == "finished", job.latest_result()
        assert job.return_value()["synced"] == 1
    finally:
        app.config["REDIS_URL"] = None
    assert _mapping(supplier, product).upstream_stock == 500


@pytest.mark.parametrize("app", ["sqlite"], indirect=True)
def test_sync_on_sqlite(app, f, supplier_sim):
    product = _direct(f)
    supplier = sim_supplier(supplier_sim, mappings={product.id: ("TENCENT-QB-10", 960)}, low_balance_threshold=1)
    supplier_sim.set_balance(0)
    report = sync.sync_all()
    assert report["synced"] == 1 and report["balance_alerts"]["raised"] == 1
    assert _mapping(supplier, product).upstream_stock == 500

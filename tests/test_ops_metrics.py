"""/metrics (app/ops/metrics.py): refused to anyone without METRICS_TOKEN or an address in METRICS_ALLOW; the
figures an on-call engineer reads (requests by group and status, latency, orders by status, deliveries, the
outbox, risk decisions, queues, the pool) move with what the app does; a scrape during a database outage still
answers, saying the database is down. The multi-process mode under gunicorn is tested in tests/test_deploy.py."""
from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.services import free_port
from config import ConfigError
from tests.conftest import make_app
from tests.openapi_helpers import new_key, signed_call
from tests.payments_helpers import PASSWORD, setup_sandbox

TOKEN = "metrics-token-" + "x" * 32


def scrape(client, **headers) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of one authorised scrape."""
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_the_token_or_an_allowed_address(app, client):
    app.config.update(METRICS_TOKEN=None, METRICS_ALLOW=[])
    r = client.get("/metrics")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"  # neither set: nobody
    app.config["METRICS_TOKEN"] = TOKEN
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": TOKEN}).status_code == 403  # the scheme is required
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    app.config.update(METRICS_TOKEN=None, METRICS_ALLOW=["10.0.0.0/8"])
    assert client.get("/metrics").status_code == 403  # the test client calls from 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    app.config["METRICS_ALLOW"] = ["127.0.0.1"]
    assert client.get("/metrics").status_code == 200
    app.config["METRICS_ALLOW"] = []


def test_a_short_metrics_token_is_refused_outside_development(tmp_path):
    from app import create_app

    base = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'k.db'}", "FAB_UPDATE_PERMS": False,
            "KAMENG_ENV": "production", "SECRET_KEY": "s" * 40, "CARD_SECRET_KEY": "c" * 40,
            "PUBLIC_BASE_URL": "https://kameng.example.com"}
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        create_app({**base, "METRICS_TOKEN": "short"})
    assert create_app({**base, "METRICS_TOKEN": TOKEN}).config["METRICS_TOKEN"] == TOKEN


def test_metrics_follow_sales_deliveries_outbox_risk_and_queues(app, client, f, redis_url):
    app.config.update(METRICS_TOKEN=TOKEN, METRICS_CACHE_SECONDS=0)
    before = scrape(client)
    buyer = f.agent(balance=1_000_000)
    product = f.product(secrets=10, face_price=1000, cost=800)
    key, secret = new_key(buyer)
    setup_sandbox()
    for _ in range(2):
        r = signed_call(client, key, secret, "POST", "/open/v1/orders",
                        {"out_trade_no": uuid.uuid4().hex, "product_id": product.id, "quantity": 1,
                         "notify_url": "http://127.0.0.1:9/cb"})
        assert r.status_code == 201
    app.config["REDIS_URL"] = redis_url
    try:
        r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "13800000000",
                                                  "query_password": PASSWORD, "channel": "sandbox"})
        assert r.status_code == 201, r.get_json()
        after = scrape(client)
    finally:
        app.config["REDIS_URL"] = None

    def grew(name, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("kameng_http_requests_total", group="open_api", method="POST", status="201") == 2
    assert grew("kameng_http_requests_total", group="shop_api", method="POST", status="201") == 1
    assert grew("kameng_http_request_duration_seconds_count", group="open_api") == 2
    assert value(after, "kameng_up", service="database") == 1 and value(after, "kameng_up", service="redis") == 1
    assert value(after, "kameng_orders_open", status="pending_payment") == 1  # the storefront order, unpaid
    assert value(after, "kameng_orders_last_hour", status="delivered") == 2
    assert value(after, "kameng_deliveries_last_15m") == 2
    assert value(after, "kameng_orders_overdue") == 0
    assert ("kameng_delivery_seconds", (("quantile", "0.99"),)) in after
    assert value(after, "kameng_risk_decisions_last_hour", outcome="allow") == 3
    assert sum(v for (name, labels), v in after.items() if name == "kameng_risk_decisions_total"
               and ("outcome", "allow") in labels) - \
        sum(v for (name, labels), v in before.items() if name == "kameng_risk_decisions_total"
            and ("outcome", "allow") in labels) == 3
    # The two callbacks failed inline (nothing listens on port 9) and wait for their retry in the outbox.
    assert value(after, "kameng_outbox_pending") == 2 and value(after, "kameng_outbox_oldest_pending_seconds") >= 0
    assert ("kameng_jobs", (("queue", "high"), ("state", "queued"))) in after
    assert ("kameng_db_pool_checked_out", ()) in after and value(after, "kameng_db_pool_size") >= 5
    assert value(after, "kameng_workers") == 0


def test_overdue_orders_are_counted(app, client, f):
    from datetime import timedelta

    from app.clock import utcnow
    from app.extensions import db
    from app.orders.models import Order
    from tests.payments_helpers import guest_order

    app.config.update(METRICS_TOKEN=TOKEN, METRICS_CACHE_SECONDS=0, DELIVERY_SLA_MINUTES=10)
    order = guest_order(f.product(secrets=1), "sandbox")
    # A paid order whose delivery never happened (what a lost job would leave), paid 11 minutes ago.
    db.session.execute(Order.__table__.update().where(Order.id == order.id)
                       .values(status="paid", paid_at=utcnow() - timedelta(minutes=11)))
    db.session.commit()
    assert value(scrape(client), "kameng_orders_overdue") == 1
    db.session.execute(Order.__table__.update().where(Order.id == order.id)
                       .values(status="pending_payment", paid_at=None))
    db.session.commit()


def test_a_scrape_during_a_database_outage_still_answers():
    down = make_app(f"postgresql://postgres@127.0.0.1:{free_port()}/kameng", FAB_CREATE_DB=False,
                    FAB_UPDATE_PERMS=False, TESTING=False, METRICS_TOKEN=TOKEN, METRICS_CACHE_SECONDS=0)
    client = down.test_client()
    client.get("/shop/api/products")  # a 503
    samples = scrape(client)
    assert value(samples, "kameng_up", service="database") == 0
    assert value(samples, "kameng_http_unavailable_total", service="database") >= 1
    assert not [name for name, _ in samples if name.startswith("kameng_orders")]

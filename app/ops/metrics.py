"""`/metrics` in Prometheus' text format, for whoever holds METRICS_TOKEN or stands in METRICS_ALLOW.

Two kinds of figures:

- Counted by the web processes as things happen: requests by endpoint group, method and status, their latency,
  503 answers by cause, risk decisions by event and outcome, and the database pool's connections in use. Under
  gunicorn these live in files under PROMETHEUS_MULTIPROC_DIR (one per process, set before the app is imported
  and emptied before gunicorn starts: deploy/gunicorn.conf.py) and /metrics adds them up over the live processes.
- Read from PostgreSQL and Redis when scraped (and reused for METRICS_CACHE_SECONDS): open orders by status,
  orders of the last hour by status, paid orders not delivered within DELIVERY_SLA_MINUTES, delivery time
  (payment to delivery) quantiles, top-ups open upstream by status, the outbox backlog and its age, risk decisions
  of the last hour, RQ queue depths, running, failed and scheduled jobs, workers, and whether each service answers.
  These cover what the worker processes do too (they serve no /metrics of their own). Each query is bounded by an
  index and a 2 s statement timeout on the probes' own small pool (app.ops.health), so a scrape during an outage
  answers quickly with `kameng_up{service="database"} 0` and the counted figures.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import re
import threading
import time
from datetime import timedelta

from flask import Flask, Response, current_app, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OPEN_ORDER_STATUSES = ("pending_payment", "paid", "delivering", "reviewing", "disputed")
OPEN_ATTEMPT_STATUSES = ("submitting", "submitted", "processing", "unknown")
DELIVERY_WINDOW = timedelta(minutes=15)

HTTP_REQUESTS = Counter("kameng_http_requests", "HTTP requests answered, by endpoint group, method and status",
                        ["group", "method", "status"])
HTTP_LATENCY = Histogram("kameng_http_request_duration_seconds", "Time to answer, by endpoint group", ["group"],
                         buckets=LATENCY_BUCKETS)
UNAVAILABLE = Counter("kameng_http_unavailable", "503 answers given because a backing service was unreachable",
                      ["service"])
RISK_DECISIONS = Counter("kameng_risk_decisions", "Risk decisions taken by the web processes", ["event", "outcome"])
POOL_IN_USE = Gauge("kameng_db_pool_checked_out", "Database connections handed out by the request pools",
                    multiprocess_mode="livesum")
POOL_SIZE = Gauge("kameng_db_pool_size", "Connections the request pools keep (before overflow)",
                  multiprocess_mode="livesum")

# (prefix or pattern, group): the first match names a request's group; anything else is an admin screen.
GROUPS = (
    ("/open/", "open_api"), ("/shop/api/", "shop_api"), (re.compile(r"^/s/[^/]+/api/"), "shop_api"),
    ("/pay/notify/", "notify"), ("/pay/refund-notify/", "notify"), ("/supplier/notify/", "notify"),
    ("/shop/", "shop"), ("/s/", "shop"), ("/pay/", "shop"), ("/portal", "portal"), ("/r/", "portal"),
    ("/dashboards/", "dashboards"), ("/analytics/", "dashboards"), ("/static/", "static"),
    ("/appbuilder/", "static"), ("/login", "auth"), ("/logout", "auth"), ("/healthz", "probes"),
    ("/readyz", "probes"), ("/metrics", "metrics"), ("/trust/", "trust"),
)


def endpoint_group(path: str) -> str:
    for match, group in GROUPS:
        if (path.startswith(match) if isinstance(match, str) else match.match(path)):
            return group
    return "admin"


def count_unavailable(service: str) -> None:
    UNAVAILABLE.labels(service).inc()


def count_risk_decision(event: str, outcome: str) -> None:
    RISK_DECISIONS.labels(event, outcome).inc()


# --- the request hooks ---------------------------------------------------------------------------------------

def _start_timer() -> None:
    request.environ["kameng.started"] = time.perf_counter()


def _observe(response: Response) -> Response:
    started = request.environ.get("kameng.started")
    if started is not None:
        group = endpoint_group(request.path)
        HTTP_REQUESTS.labels(group, request.method, str(response.status_code)).inc()
        HTTP_LATENCY.labels(group).observe(time.perf_counter() - started)
    return response


def _watch_pool(engine) -> None:
    from sqlalchemy import event

    if getattr(engine, "_kameng_watched", False):
        return
    engine._kameng_watched = True
    event.listen(engine, "checkout", lambda *_: POOL_IN_USE.inc())
    event.listen(engine, "checkin", lambda *_: POOL_IN_USE.dec())
    size = getattr(engine.pool, "size", None)
    if callable(size):
        POOL_SIZE.inc(size())


# --- /metrics ------------------------------------------------------------------------------------------------

def allowed() -> bool:
    """A matching bearer token, or a caller address inside METRICS_ALLOW; neither set: nobody."""
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        given = request.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            return True
    networks = current_app.config.get("METRICS_ALLOW") or []
    if networks and request.remote_addr:
        try:
            address = ipaddress.ip_address(request.remote_addr)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network in networks:
            try:
                if address in ipaddress.ip_network(network, strict=False):
                    return True
            except ValueError:
                continue
    return False


def metrics_view():
    if not allowed():
        response = jsonify({"error": {"code": "forbidden", "message": "metrics need METRICS_TOKEN (Authorization: "
                                                                      "Bearer ...) or an address in METRICS_ALLOW"}})
        response.status_code = 403
        return response
    business = CollectorRegistry(auto_describe=False)
    business.register(BusinessCollector(current_app._get_current_object()))
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    body = generate_latest(counted) + generate_latest(business)
    response = Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0])
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


class BusinessCollector:
    """The figures read from PostgreSQL and Redis at scrape time (see the module docstring)."""

    _cache: dict[int, tuple[float, list]] = {}
    _lock = threading.Lock()

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self):
        ttl = float(self.app.config.get("METRICS_CACHE_SECONDS", 5))
        key = id(self.app)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None or time.monotonic() - cached[0] > ttl:
                started = time.perf_counter()
                families = _database_families(self.app) + _queue_families(self.app)
                took = GaugeMetricFamily("kameng_metrics_collect_seconds", "Time the last database and queue "
                                                                           "figures took to read")
                took.add_metric([], time.perf_counter() - started)
                families.append(took)
                cached = self._cache[key] = (time.monotonic(), families)
        yield from cached[1]


def _database_families(app: Flask) -> list:
    from app.ops.health import probe_engine

    up = GaugeMetricFamily("kameng_up", "Whether a backing service answered the last scrape", labels=["service"])
    try:
        with app.app_context(), probe_engine().connect() as conn:
            families = _read_database(app, conn)
        up.add_metric(["database"], 1)
        return [up] + families
    except Exception:
        up.add_metric(["database"], 0)
        return [up]


def _read_database(app: Flask, conn) -> list:
    from sqlalchemy import func, select

    from app.clock import utcnow
    from app.orders.models import Order
    from app.outbox.models import OutboxMessage
    from app.risk.models import RiskDecision
    from app.suppliers.models import RechargeAttempt

    now = utcnow()
    hour_ago = now - timedelta(hours=1)
    families = []

    open_orders = GaugeMetricFamily("kameng_orders_open", "Orders in a non-final status", labels=["status"])
    counts = dict(conn.execute(select(Order.status, func.count()).where(Order.status.in_(OPEN_ORDER_STATUSES))
                               .group_by(Order.status)).all())
    for status in OPEN_ORDER_STATUSES:
        open_orders.add_metric([status], counts.get(status, 0))
    families.append(open_orders)

    recent = GaugeMetricFamily("kameng_orders_last_hour", "Orders created in the last hour, by status now",
                               labels=["status"])
    for status, count in conn.execute(select(Order.status, func.count()).where(Order.created_at > hour_ago)
                                      .group_by(Order.status)).all():
        recent.add_metric([status], count)
    families.append(recent)

    sla = int(app.config.get("DELIVERY_SLA_MINUTES", 10)) * 60  # the delivery promise's (app/suppliers/sla.py)
    overdue = GaugeMetricFamily("kameng_orders_overdue", f"Orders paid more than DELIVERY_SLA_MINUTES ({sla} s) ago "
                                                         "and still not delivered (paid, delivering)")
    overdue.add_metric([], conn.execute(select(func.count()).where(
        Order.status.in_(("paid", "delivering")), Order.paid_at < now - timedelta(seconds=sla))).scalar_one())
    families.append(overdue)

    rows = conn.execute(select(Order.paid_at, Order.delivered_at).where(
        Order.created_at > hour_ago, Order.delivered_at > now - DELIVERY_WINDOW, Order.paid_at.is_not(None))
        .limit(20000)).all()
    durations = sorted(max(0.0, (d - p).total_seconds()) for p, d in rows)
    delivery = GaugeMetricFamily("kameng_delivery_seconds", "Payment to delivery, orders delivered in the last "
                                                            "15 minutes", labels=["quantile"])
    for q in ("0.5", "0.95", "0.99"):
        delivery.add_metric([q], _quantile(durations, float(q)) if durations else 0.0)
    delivered = GaugeMetricFamily("kameng_deliveries_last_15m", "Orders delivered in the last 15 minutes")
    delivered.add_metric([], len(durations))
    families += [delivery, delivered]

    attempts = GaugeMetricFamily("kameng_recharge_attempts_open", "Direct top-ups waiting on a supplier, by status",
                                 labels=["status"])
    counts = dict(conn.execute(select(RechargeAttempt.status, func.count())
                               .where(RechargeAttempt.status.in_(OPEN_ATTEMPT_STATUSES))
                               .group_by(RechargeAttempt.status)).all())
    for status in OPEN_ATTEMPT_STATUSES:
        attempts.add_metric([status], counts.get(status, 0))
    families.append(attempts)

    pending, oldest = conn.execute(select(func.count(), func.min(OutboxMessage.created_at))
                                   .where(OutboxMessage.status == "pending")).one()
    outbox = GaugeMetricFamily("kameng_outbox_pending", "Outbox messages not yet done (jobs, callbacks)")
    outbox.add_metric([], pending)
    age = GaugeMetricFamily("kameng_outbox_oldest_pending_seconds", "Age of the oldest pending outbox message")
    age.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    failed = GaugeMetricFamily("kameng_outbox_failed_last_hour", "Outbox messages given up in the last hour")
    failed.add_metric([], conn.execute(select(func.count()).where(
        OutboxMessage.status == "failed", OutboxMessage.finished_at > hour_ago)).scalar_one())
    families += [outbox, age, failed]

    risk = GaugeMetricFamily("kameng_risk_decisions_last_hour", "Risk decisions of the last hour by outcome "
                                                               "(all processes)", labels=["outcome"])
    counts = dict(conn.execute(select(RiskDecision.outcome, func.count()).where(RiskDecision.created_at > hour_ago)
                               .group_by(RiskDecision.outcome)).all())
    for outcome in ("allow", "review", "block"):
        risk.add_metric([outcome], counts.get(outcome, 0))
    families.append(risk)
    return families


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def _queue_families(app: Flask) -> list:
    from app.ops.health import probe_redis

    with app.app_context():
        client = probe_redis()
    if client is None:
        return []
    up = GaugeMetricFamily("kameng_up", "Whether a backing service answered the last scrape", labels=["service"])
    try:
        from rq import Queue, Worker
        from rq.registry import (
            DeferredJobRegistry,
            FailedJobRegistry,
            ScheduledJobRegistry,
            StartedJobRegistry,
        )

        from app.queueing import QUEUES

        jobs = GaugeMetricFamily("kameng_jobs", "RQ jobs by queue and state (failed: kept for 30 days)",
                                 labels=["queue", "state"])
        for name in QUEUES:
            queue = Queue(name, connection=client)
            jobs.add_metric([name, "queued"], queue.count)
            for state, registry in (("running", StartedJobRegistry), ("failed", FailedJobRegistry),
                                    ("scheduled", ScheduledJobRegistry), ("deferred", DeferredJobRegistry)):
                jobs.add_metric([name, state], registry(queue=queue).count)
        workers = GaugeMetricFamily("kameng_workers", "RQ workers registered")
        workers.add_metric([], Worker.count(connection=client))
        up.add_metric(["redis"], 1)
        return [up, jobs, workers]
    except Exception:
        up.add_metric(["redis"], 0)
        return [up]


def init_app(app: Flask) -> None:
    from app.extensions import csrf, db

    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_observe)
    app.add_url_rule("/metrics", "ops_metrics", metrics_view)
    csrf.exempt(metrics_view)
    with app.app_context():
        _watch_pool(db.engine)

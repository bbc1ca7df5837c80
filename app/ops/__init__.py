"""Running in production: health and readiness probes, outage answers (503, never a 500), Prometheus metrics,
structured logs with a request id. Wired into the app by `init_app`; no business rules live here."""
from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Called last in create_app, so the request id is set before any other before_request runs (see logs.py)
    and the outage handlers see every view's errors."""
    from app.ops import health, logs, metrics, outage

    logs.init_app(app)
    outage.init_app(app)
    health.init_app(app)
    metrics.init_app(app)

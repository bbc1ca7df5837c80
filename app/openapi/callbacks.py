"""Order callbacks: POST the order's state to its notify_url, signed with the placing key's secret, with backoff."""
from __future__ import annotations

import json
import secrets
import time
from datetime import timedelta
from urllib.parse import urlsplit

from app import outbound
from app.clock import utcnow
from app.extensions import db
from app.openapi import signing
from app.openapi.models import ApiKey, CallbackAttempt
from app.openapi.service import key_secret, order_json
from app.orders.models import Order
from app.outbox import service as outbox
from app.outbox.models import OutboxMessage

# After the first attempt: 15 s, 1 m, 5 m, 30 m, 2 h, 6 h; then the callback is marked failed.
BACKOFF = [timedelta(seconds=15), timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30),
           timedelta(hours=2), timedelta(hours=6)]
TIMEOUT_SECONDS = 10


def callback_body(order: Order, status: str) -> bytes:
    payload = order_json(order, with_secrets=False)
    payload["event"] = "order.status_changed"
    payload["notified_status"] = status
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@outbox.handler("order_callback")
def send_order_callback(message: OutboxMessage) -> None:
    data = json.loads(message.payload)
    order = db.session.get(Order, data["order_id"])
    if order is None or not order.notify_url:
        outbox.finish(message, "failed", "order or notify_url missing")
        return
    attempt_no = message.attempts + 1
    message.attempts = attempt_no
    http_status, error, elapsed_ms = _post(order, data["status"])
    succeeded = http_status is not None and 200 <= http_status < 300
    next_at = None if succeeded or attempt_no > len(BACKOFF) else utcnow() + BACKOFF[attempt_no - 1]
    db.session.add(CallbackAttempt(order_id=order.id, agent_id=order.agent_id, outbox_id=message.id,
                                   attempt=attempt_no, url=order.notify_url[:512], order_status=data["status"],
                                   http_status=http_status, error=error, succeeded=succeeded,
                                   duration_ms=elapsed_ms, next_attempt_at=next_at))
    if succeeded:
        outbox.finish(message, "done")
    elif next_at is None:
        outbox.finish(message, "failed", error or f"HTTP {http_status}")
    else:
        outbox.retry_later(message, BACKOFF[attempt_no - 1], error or f"HTTP {http_status}")


def _post(order: Order, status: str) -> tuple[int | None, str | None, int]:
    started = time.monotonic()
    url = order.notify_url
    parts = urlsplit(url)
    key = db.session.get(ApiKey, order.api_key_id) if order.api_key_id else None
    if key is None or not key.active:
        return None, "the API key that placed the order is revoked", 0
    body = callback_body(order, status)
    headers = signing.signed_headers(key.app_key, key_secret(key), "POST", parts.path or "/", body,
                                     nonce=secrets.token_hex(16))
    headers["Content-Type"] = "application/json"
    # Through the fence: a notify_url that resolves to loopback, private or metadata addresses is refused at
    # connect time (the attempt log shows "destination refused: ..."); a 3xx is not followed and counts as failed.
    try:
        response = outbound.post(url, data=body, headers=headers, timeout=TIMEOUT_SECONDS)
        return response.status_code, None, int((time.monotonic() - started) * 1000)
    except outbound.FAILURES as exc:
        return None, outbound.describe(exc)[:255], int((time.monotonic() - started) * 1000)

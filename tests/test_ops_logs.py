"""Structured logs with a request id (app/ops/logs.py): every answer names its request id (the proxy's, when it
looks like one); JSON log lines carry it; a job enqueued by the request carries it into the worker's log lines, and
the Open API callback the request caused sends it as X-Request-ID."""
from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from app.ops import logs
from tests.openapi_helpers import Receiver, new_key, signed_call

log = logging.getLogger("kameng.test.ops")


@pytest.fixture
def captured():
    """The root logger's lines as the production handler writes them (JSON), collected in memory."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    log.disabled = False  # Alembic's fileConfig (the session's migration) disables loggers that existed before it
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        root.removeHandler(handler)


def logging_job(word: str) -> None:
    """A job that only logs (run by a real RQ worker below)."""
    log.warning("job says %s", word)


def test_every_answer_names_its_request_id(client):
    first, second = client.get("/healthz"), client.get("/healthz")
    assert logs.VALID_ID.match(first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    given = "nginx-" + uuid.uuid4().hex
    assert client.get("/healthz", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given
    for forged in ("short", "bad id with spaces", "x" * 200, "id;X-Evil=1/\"quoted\""):
        answered = client.get("/healthz", headers={"X-Request-ID": forged}).headers["X-Request-ID"]
        assert answered != forged and logs.VALID_ID.match(answered)


def test_json_lines_carry_the_request_id(app, captured):
    with app.test_request_context("/shop/", headers={"X-Request-ID": "req-0123456789"}):
        app.preprocess_request()
        log.warning("inside %s", "the request")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    [line, failure] = [entry for entry in captured() if entry["logger"] == "kameng.test.ops"]
    assert line["message"] == "inside the request" and line["request_id"] == "req-0123456789"
    assert line["level"] == "WARNING" and line["ts"].endswith("Z")
    assert failure["request_id"] == "req-0123456789" and "ValueError: boom" in failure["exc"]


def test_a_job_logs_under_the_request_that_enqueued_it(app, redis_url, captured):
    from workers.queues import enqueue, get_queue
    from workers.runner import run_worker

    app.config["REDIS_URL"] = redis_url
    try:
        with app.test_request_context("/portal/buy", headers={"X-Request-ID": "req-job-0123456789"}):
            app.preprocess_request()
            enqueue(logging_job, "hello", job_id="ops-log-test", queue="low")
        assert get_queue("low").fetch_job("ops-log-test").meta["request_id"] == "req-job-0123456789"
        run_worker(["low"], burst=True, with_cron=False)
    finally:
        app.config["REDIS_URL"] = None
    [line] = [entry for entry in captured() if entry["logger"] == "kameng.test.ops"]
    assert line["message"] == "job says hello"
    assert line["request_id"] == "req-job-0123456789" and line["job_id"] == "ops-log-test"


def test_the_callback_quotes_the_request_id(app, client, f):
    receiver = Receiver().start()
    try:
        buyer = f.agent(balance=100_000)
        product = f.product(face_price=1000, cost=800, secrets=2)
        key, secret = new_key(buyer)
        r = signed_call(client, key, secret, "POST", "/open/v1/orders",
                        {"out_trade_no": uuid.uuid4().hex, "product_id": product.id, "quantity": 1,
                         "notify_url": receiver.url("/notify")},
                        headers={"X-Request-ID": "reseller-call-0001"})
        assert r.status_code == 201 and r.headers["X-Request-ID"] == "reseller-call-0001"
        [callback] = receiver.requests  # inline: sent when the request ended
        assert {k.lower(): v for k, v in callback["headers"].items()}["x-request-id"] == "reseller-call-0001"
    finally:
        receiver.stop()


def test_log_format_is_json_outside_development_and_checked():
    from app.ops.logs import configure_from

    # The handler every app installs; installed here as well: an earlier test in this process may have replaced the
    # root logger's handlers (Alembic's fileConfig does, in the migration tests).
    configure_from({"KAMENG_ENV": "development"})
    root = logging.getLogger()
    handler = next(h for h in root.handlers if getattr(h, "kameng", False))
    try:
        configure_from({"KAMENG_ENV": "production"})
        assert isinstance(handler.formatter, logs.JsonFormatter)
        configure_from({"KAMENG_ENV": "production", "LOG_FORMAT": "text"})
        assert not isinstance(handler.formatter, logs.JsonFormatter)
        with pytest.raises(RuntimeError, match="LOG_FORMAT"):
            configure_from({"LOG_FORMAT": "xml"})
    finally:
        configure_from({"KAMENG_ENV": "development"})

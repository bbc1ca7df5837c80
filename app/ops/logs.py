"""Structured logs with a request id.

Every request gets an id: the `X-Request-ID` the proxy sent (nginx's `$request_id`; any caller's value that looks
like an id), else a new one. It is answered in the `X-Request-ID` header, written on every log line of the
request, put in the meta of every job the request enqueues (the worker's log lines for that job carry it), and
sent as `X-Request-ID` on outbound calls made under it (Open API callbacks, supplier and channel calls), so one
purchase can be followed from nginx's access log through the web process, the job and the callback.

`LOG_FORMAT=json` (the default outside development) writes one JSON object per line:
`{"ts", "level", "logger", "message", "request_id", "job_id"?, "exc"?}`; `text` keeps the readable format.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

from flask import Flask, request

_REQUEST_ID = contextvars.ContextVar("kameng_request_id", default=None)
_JOB_ID = contextvars.ContextVar("kameng_job_id", default=None)
VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")  # nothing that could forge a log line or a header
HEADER = "X-Request-ID"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


def correlation_id() -> str | None:
    """The request id, else the job id: what an outbound call names itself by."""
    return _REQUEST_ID.get() or _JOB_ID.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def bind(request_id: str | None, job_id: str | None = None) -> tuple:
    """Set the ids of what this thread does now (a job); returns tokens for `unbind`."""
    return _REQUEST_ID.set(request_id), _JOB_ID.set(job_id)


def unbind(tokens: tuple) -> None:
    request_token, job_token = tokens
    _REQUEST_ID.reset(request_token)
    _JOB_ID.reset(job_token)


class ContextFilter(logging.Filter):
    """Puts the current request and job ids on every record (handlers' filters see records of every logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get() or "-"
        record.job_id = _JOB_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or "-",
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str, level: str = "INFO") -> None:
    """One handler on the root logger, in the chosen format (called for every app; replaces only its own)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "kameng", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.kameng = True
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.setLevel(level.upper())


def _assign_request_id() -> None:
    given = request.headers.get(HEADER, "")
    request_id = given if VALID_ID.match(given) else new_request_id()
    request.environ["kameng.request_id"] = request_id
    _REQUEST_ID.set(request_id)
    _JOB_ID.set(None)


def _forget_request_id(_exc) -> None:
    _REQUEST_ID.set(None)


def _answer_request_id(response):
    request_id = request.environ.get("kameng.request_id")
    if request_id:
        response.headers[HEADER] = request_id
    return response


def configure_from(config: dict) -> None:
    default = "text" if config.get("KAMENG_ENV") == "development" else "json"
    log_format = (config.get("LOG_FORMAT") or default).lower()
    if log_format not in ("json", "text"):
        raise RuntimeError(f"LOG_FORMAT must be json or text, got {log_format!r}")
    configure_logging(log_format, config.get("LOG_LEVEL") or "INFO")


def init_app(app: Flask) -> None:
    # First of all before_request functions: whatever logs during the others carries the id.
    app.before_request_funcs.setdefault(None, []).insert(0, _assign_request_id)
    app.after_request(_answer_request_id)
    # Cleared once the request's teardown (which may dispatch its outbox jobs under the id) is over.
    app.teardown_appcontext(_forget_request_id)

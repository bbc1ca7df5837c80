"""gunicorn settings of a Kameng web process: `gunicorn -c deploy/gunicorn.conf.py --bind HOST:PORT run:app`
(deploy/systemd/kameng-web@.service; `make deploy-check` starts two of these on one machine).

- 4 sync workers by default (WEB_WORKERS): measured best on 2 cores (README, bench/openapi.py); 3 or 6 sync
  workers and gthread (2 x 4 threads) did no better, gthread had the worst p99 (GIL contention).
- Prometheus in multi-process mode: PROMETHEUS_MULTIPROC_DIR (one folder per gunicorn, in the environment before
  anything imports prometheus_client) is emptied when gunicorn starts; a worker that exits is marked dead, so
  live gauges (the pool's connections in use) stop counting it.
- Logs: errors on stderr as JSON lines (LOG_FORMAT, like the app's); no access log here, nginx writes it with the
  request id.
- Each worker loads what risk control's first decision needs (rule parser, rules, models) before it takes a
  request (post_worker_init); a failure there is logged and the worker serves anyway (it loads them on demand).
- No control socket: several gunicorns run as one user (gunicorn 27 would put them all in ~/.gunicorn/).
"""
import os
import shutil

bind = os.environ.get("KAMENG_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_WORKERS", "4"))
worker_class = "sync"
timeout = 60
graceful_timeout = 30
keepalive = 5
backlog = 2048
# A worker is replaced now and then (memory held by a long life); jitter keeps them from restarting together.
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "20000"))
max_requests_jitter = max_requests // 10
control_socket_disable = True
accesslog = None
errorlog = "-"
proc_name = "kameng-web"

if (os.environ.get("LOG_FORMAT") or ("text" if os.environ.get("KAMENG_ENV") == "development" else "json")) == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.ops.logs.JsonFormatter"}},
        "filters": {"context": {"()": "app.ops.logs.ContextFilter"}},
        # gunicorn merges this over its defaults, which name these two handlers
        "handlers": {name: {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"],
                            "stream": "ext://sys.stderr"} for name in ("console", "error_console")},
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {"gunicorn.error": {"handlers": ["error_console"], "level": "INFO", "propagate": False,
                                       "qualname": "gunicorn.error"}},
    }


def on_starting(server):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:  # the counts of an earlier run would be added to this one's
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    try:
        from app.risk.service import warm_up

        with worker.wsgi.app_context():
            loaded = warm_up()
        worker.log.debug("risk control warmed up: %s", loaded)
    except Exception:  # the worker still serves: what was not loaded loads with its first decision
        worker.log.exception("risk control warm-up failed")

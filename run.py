"""The web entry point: `flask --app run ...`, `gunicorn run:app`."""
import sys

from app import create_app
from config import ConfigError
from workers.inline import start_inline_scheduler

try:
    app = create_app()
except ConfigError as exc:  # say what is missing, without a traceback, and stop (Flask CLI, gunicorn alike)
    sys.exit(f"卡盟 Kameng refuses to start: {exc}")
start_inline_scheduler(app)  # only with INLINE_SCHEDULER on and no REDIS_URL (make run)

"""The web entry point: `flask --app run ...`, `gunicorn run:app`."""
from app import create_app
from workers.inline import start_inline_scheduler

app = create_app()
start_inline_scheduler(app)  # only with INLINE_SCHEDULER on and no REDIS_URL (make run)

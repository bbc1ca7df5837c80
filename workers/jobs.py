"""Job functions: take ids, run inside the Flask app, call one service. Idempotent on database state."""
from __future__ import annotations

from app.catalog import cards
from workers.queues import report_progress


def import_cards(import_id: int) -> dict:
    """Large card-secret imports (more than CARD_IMPORT_JOB_THRESHOLD lines) run here, on the low queue."""
    return cards.run_import(import_id, progress=report_progress)


def scan_low_stock() -> dict:
    """Scheduled: raise and resolve restock alerts (补货提醒)."""
    return cards.scan_low_stock()

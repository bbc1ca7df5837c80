"""Jinja helpers shared by the portal and admin templates."""
from __future__ import annotations

from flask import Flask

from app.clock import to_local
from app.crypto import mask
from app.money import format_fen


def register_template_helpers(app: Flask) -> None:
    app.jinja_env.filters["fen"] = format_fen
    app.jinja_env.filters["mask"] = lambda value: mask(value) if value else ""  # app.crypto.mask, the one masker
    app.jinja_env.filters["local_time"] = lambda dt: to_local(dt).strftime("%Y-%m-%d %H:%M:%S") if dt else ""

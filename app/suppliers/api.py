"""Supplier callbacks: `POST /supplier/notify/<supplier_id>`, verified with that supplier's key (no login, no
CSRF: suppliers are servers). The handler only translates; app.suppliers.recharge applies the result."""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify, request

from app.errors import KamengError
from app.extensions import csrf, db
from app.suppliers import recharge

supplier_api = Blueprint("supplier_api", __name__)


@supplier_api.post("/supplier/notify/<int:supplier_id>")
def notify(supplier_id: int):
    try:
        answer = recharge.handle_callback(supplier_id, dict(request.headers), request.get_data(cache=True),
                                          request.remote_addr)
    except KamengError as exc:
        db.session.rollback()
        response = jsonify(exc.to_dict())
        response.status_code = exc.status if 400 <= exc.status < 500 else 400
        return response
    return current_app.response_class(answer, status=200, content_type="text/plain; charset=utf-8")


def register(app: Flask) -> None:
    csrf.exempt(notify)
    app.register_blueprint(supplier_api)

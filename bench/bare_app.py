"""The HTTP floor bench/openapi.py and bench/checkout.py measure beside the real app: a bare Flask app (no extension,
no database) answering the requests their load generators send, served by the same gunicorn worker model and count.
What a request costs here (gunicorn's HTTP handling, the sockets, Flask's dispatch, parsing the body and answering)
is the least any endpoint of the real app can cost on this machine.

- POST /open/v1/orders (JSON): 201 with a small JSON object, as a created Open API order.
- POST /pay/notify/<channel> (form): the body "success", as a recorded payment notification.
- POST /shop/api/lookup (JSON): 200 with the order delivered and one card secret, as a storefront lookup.
"""
from __future__ import annotations

import json

from flask import Flask, jsonify, request

app = Flask("bare")


def _json() -> dict:
    return json.loads(request.get_data() or b"{}")


@app.post("/open/v1/orders")
def create_order():
    response = jsonify({"out_trade_no": _json().get("out_trade_no"), "status": "delivered"})
    response.status_code = 201
    return response


@app.post("/pay/notify/<channel>")
def notify(channel: str):
    return "success" if request.form.get("order_no") else ("missing order_no", 400)


@app.post("/shop/api/lookup")
def lookup():
    return jsonify({"order_no": _json().get("order_no"), "status": "delivered", "card_secrets": ["BARE-0000"]})


@app.get("/open/v1/openapi.json")
@app.get("/shop/api/products")
def ready():
    return jsonify({"ready": True})

"""A small signed client for the Open API, as a reseller would write it (used by the Kameng supplier adapter, tests
and bench/). By default it calls through the outbound fence (app/outbound.py): pinned global addresses, no redirects,
capped answers."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import requests

from app import outbound
from app.openapi.signing import signed_headers


class OpenApiClient:
    def __init__(self, base_url: str, app_key: str, app_secret: str, timeout: float = 30,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.app_key = app_key
        self.app_secret = app_secret
        self.timeout = timeout
        self.session = session if session is not None else outbound.session()

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None,
                headers: dict | None = None) -> requests.Response:
        raw = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        url = self.base_url + path
        signed_path = urlsplit(url).path
        all_headers = signed_headers(self.app_key, self.app_secret, method, signed_path, raw)
        if raw:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        return self.session.request(method, url, data=raw or None, params=params, headers=all_headers,
                                    timeout=self.timeout, allow_redirects=False)

    def products(self) -> requests.Response:
        return self.request("GET", "/open/v1/products")

    def balance(self) -> requests.Response:
        return self.request("GET", "/open/v1/balance")

    def create_order(self, out_trade_no: str, product_id: int, quantity: int = 1, account: str | None = None,
                     notify_url: str | None = None) -> requests.Response:
        body: dict[str, Any] = {"out_trade_no": out_trade_no, "product_id": product_id, "quantity": quantity}
        if account is not None:
            body["account"] = account
        if notify_url is not None:
            body["notify_url"] = notify_url
        return self.request("POST", "/open/v1/orders", body)

    def order(self, order_no: str) -> requests.Response:
        return self.request("GET", f"/open/v1/orders/{order_no}")

    def order_by_out_trade_no(self, out_trade_no: str) -> requests.Response:
        return self.request("GET", "/open/v1/orders", params={"out_trade_no": out_trade_no})

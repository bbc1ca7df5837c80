"""The adapter for the supplier simulator's protocol (app/suppliers/simulator.py documents it): signed JSON over
HTTP, order numbers deduplicated upstream, signed callbacks."""
from __future__ import annotations

import hmac
import json
import time
from urllib.parse import urlsplit

from app import outbound
from app.openapi import signing
from app.suppliers.adapters.base import (
    FAILED,
    NOT_FOUND,
    PROCESSING,
    SUBMITTED,
    SUCCESS,
    CallbackResult,
    InvalidCallback,
    StockItem,
    SupplierAdapter,
    UpstreamResult,
    UpstreamUnreachable,
)

ANSWER_STATUSES = (SUBMITTED, PROCESSING, SUCCESS, FAILED)
CALLBACK_MAX_BYTES = 64 * 1024


def lower_headers(headers) -> dict[str, str]:
    """Header names case-insensitively, whether a dict or werkzeug's Headers arrives."""
    return {str(k).lower(): str(v) for k, v in (headers.items() if hasattr(headers, "items") else headers)}


def verify_signed_callback(headers, body: bytes, app_key: str | None, secret: str, path: str,
                           now: float | None = None) -> None:
    """Check a callback signed like our requests (app.openapi.signing): key, 300 s window, constant-time HMAC."""
    h = lower_headers(headers)
    given_key, ts = h.get("x-app-key", ""), h.get("x-timestamp", "")
    nonce, signature = h.get("x-nonce", ""), h.get("x-signature", "")
    if not (given_key and ts and nonce and signature):
        raise InvalidCallback("missing X-App-Key, X-Timestamp, X-Nonce or X-Signature")
    expected = signing.sign(secret, "POST", path, ts, nonce, body)
    # Compare the signature before anything else leaks timing about which part was wrong.
    signature_ok = signing.signature_matches(expected, signature)
    key_ok = app_key is None or hmac.compare_digest(app_key.encode(), given_key.encode())
    if not (signature_ok and key_ok):
        raise InvalidCallback("bad signature or app key")
    if not (ts.isascii() and ts.isdigit()) or abs((now or time.time()) - int(ts)) > signing.MAX_SKEW_SECONDS:
        raise InvalidCallback("stale callback: X-Timestamp is not within 300 seconds")


def notify_path(connection) -> str:
    """The path our callback URL has, which the upstream signs."""
    if connection.notify_url:
        return urlsplit(connection.notify_url).path or "/"
    return f"/supplier/notify/{connection.supplier_id}"


class SimulatorAdapter(SupplierAdapter):
    protocol = "simulator"

    def _call(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        """One signed request. Returns (HTTP status, JSON object) for 2xx and 4xx other than 401/403; raises
        UpstreamUnreachable for anything whose outcome we cannot know."""
        conn = self.connection
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        url = conn.endpoint.rstrip("/") + path
        headers = signing.signed_headers(conn.app_key, conn.secret, method, urlsplit(url).path, body)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            response = outbound.request(method, url, data=body or None, headers=headers, timeout=conn.timeout)
        except outbound.FAILURES as exc:
            raise UpstreamUnreachable(f"{path}: {outbound.describe(exc)}"[:255]) from exc
        if response.status_code in (401, 403):
            raise UpstreamUnreachable(f"{path}: the upstream refused our credentials (HTTP {response.status_code}:"
                                      f" {response.text[:120]})")
        if response.status_code >= 500 or response.status_code < 200 or 300 <= response.status_code < 400:
            raise UpstreamUnreachable(f"{path}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise UpstreamUnreachable(f"{path}: unreadable answer (HTTP {response.status_code})") from None
        if not isinstance(data, dict):
            raise UpstreamUnreachable(f"{path}: unreadable answer (not a JSON object)")
        return response.status_code, data

    @staticmethod
    def _result(data: dict, allowed: tuple[str, ...]) -> UpstreamResult:
        status = data.get("status")
        if status not in allowed:
            raise UpstreamUnreachable(f"unexpected upstream status {status!r}")
        trade_no = data.get("trade_no")
        return UpstreamResult(status=status, trade_no=str(trade_no)[:64] if trade_no else None,
                              message=str(data.get("message") or "")[:255])

    def submit(self, order_no: str, code: str, account: str, quantity: int) -> UpstreamResult:
        payload = {"order_no": order_no, "code": code, "account": account, "quantity": quantity}
        if self.connection.notify_url:
            payload["notify_url"] = self.connection.notify_url
        status, data = self._call("POST", "/api/recharge", payload)
        if status >= 400:  # refused before recording it (bad request): it will never credit this
            return UpstreamResult(status=FAILED, message=f"HTTP {status}: {str(data.get('error', ''))[:200]}")
        return self._result(data, ANSWER_STATUSES)

    def query(self, order_no: str) -> UpstreamResult:
        status, data = self._call("POST", "/api/query", {"order_no": order_no})
        if status >= 400:
            raise UpstreamUnreachable(f"query refused: HTTP {status}: {str(data.get('error', ''))[:200]}")
        return self._result(data, ANSWER_STATUSES + (NOT_FOUND,))

    def cancel(self, order_no: str) -> UpstreamResult:
        status, data = self._call("POST", "/api/cancel", {"order_no": order_no})
        if status >= 400:
            raise UpstreamUnreachable(f"cancel refused: HTTP {status}: {str(data.get('error', ''))[:200]}")
        return self._result(data, ANSWER_STATUSES)

    def parse_callback(self, headers: dict, body: bytes) -> CallbackResult:
        if len(body) > CALLBACK_MAX_BYTES:
            raise InvalidCallback("callback body too large")
        verify_signed_callback(headers, body, self.connection.app_key, self.connection.secret,
                               notify_path(self.connection))
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidCallback("callback body is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("order_no"), str) or not data["order_no"]:
            raise InvalidCallback("callback names no order_no")
        if data.get("status") not in ANSWER_STATUSES:
            raise InvalidCallback(f"callback status {data.get('status')!r} is not one we know")
        trade_no = data.get("trade_no")
        return CallbackResult(order_no=data["order_no"][:64], status=data["status"],
                              trade_no=str(trade_no)[:64] if trade_no else None,
                              message=str(data.get("message") or "")[:255], answer="success")

    def query_balance(self) -> int:
        status, data = self._call("GET", "/api/balance")
        balance = data.get("balance")
        if status >= 400 or isinstance(balance, bool) or not isinstance(balance, int):
            raise UpstreamUnreachable(f"balance: unreadable answer (HTTP {status})")
        return balance

    def list_stock(self) -> list[StockItem]:
        status, data = self._call("GET", "/api/products")
        products = data.get("products")
        if status >= 400 or not isinstance(products, list):
            raise UpstreamUnreachable(f"products: unreadable answer (HTTP {status})")
        items = []
        for p in products:
            if not isinstance(p, dict) or not isinstance(p.get("code"), str):
                continue
            stock, price = p.get("stock"), p.get("price")
            items.append(StockItem(code=p["code"], name=str(p.get("name") or ""),
                                   stock=stock if isinstance(stock, int) and not isinstance(stock, bool) else None,
                                   price=price if isinstance(price, int) and not isinstance(price, bool) else None,
                                   available=bool(p.get("available", True))))
        return items

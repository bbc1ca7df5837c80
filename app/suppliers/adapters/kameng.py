"""Docking (对接): another Kameng instance is the upstream, reached through its Open API (DESIGN.md "Open API").

The Supplier's app_key/secret are our API key at the other Kameng (an agent there, paying from its wallet);
the endpoint is that Kameng's base URL; a mapping's upstream_code is the product_id there. Our order number is
sent as out_trade_no, which the upstream deduplicates per agent, so a resubmit returns the same order.
"""
from __future__ import annotations

import json

from app import outbound
from app.openapi.client import OpenApiClient
from app.suppliers.adapters.base import (
    FAILED,
    NOT_FOUND,
    PROCESSING,
    SUCCESS,
    CallbackResult,
    InvalidCallback,
    StockItem,
    SupplierAdapter,
    UpstreamResult,
    UpstreamUnreachable,
)
from app.suppliers.adapters.simulator import CALLBACK_MAX_BYTES, notify_path, verify_signed_callback

# The upstream order's status (app.orders.models.ORDER_STATUSES) as an upstream status. disputed: it was
# delivered before the buyer there opened a dispute.
STATUS_MAP = {
    "delivered": SUCCESS, "disputed": SUCCESS,
    "failed": FAILED, "refunded": FAILED, "closed": FAILED,
    "paid": PROCESSING, "delivering": PROCESSING, "pending_payment": PROCESSING,
}
# Error answers that say nothing definite about the order: try again later (a 401 from a rotated key or a
# skewed clock, a rate limit). Once fixed, a query finds the order or says not_found and it is resubmitted.
# 403 is not here: the upstream disabled our agent, so it created nothing and will not.
UNKNOWN_OUTCOME_HTTP = {401, 408, 425, 429}


class KamengAdapter(SupplierAdapter):
    protocol = "kameng"

    def __init__(self, connection):
        super().__init__(connection)
        base = connection.endpoint.rstrip("/")
        base = base[: -len("/open/v1")] if base.endswith("/open/v1") else base  # either form of endpoint works
        self.client = OpenApiClient(base, connection.app_key, connection.secret, timeout=connection.timeout)

    def _send(self, call, *args, **kwargs) -> tuple[int, dict]:
        """(HTTP status, JSON object); UpstreamUnreachable when no answer could tell us anything."""
        try:
            response = call(*args, **kwargs)
        except outbound.FAILURES as exc:
            raise UpstreamUnreachable(outbound.describe(exc)[:255]) from exc
        if 300 <= response.status_code < 400:  # never followed: the upstream's answer is the 3xx, not an order
            raise UpstreamUnreachable(f"HTTP {response.status_code}: redirect not followed "
                                      f"(Location: {response.headers.get('Location', '')})"[:255])
        if response.status_code >= 500 or response.status_code in UNKNOWN_OUTCOME_HTTP:
            raise UpstreamUnreachable(f"HTTP {response.status_code}: {_error_text(response)}"[:255])
        try:
            data = response.json()
        except ValueError:
            raise UpstreamUnreachable(f"unreadable answer (HTTP {response.status_code})") from None
        if not isinstance(data, dict):
            raise UpstreamUnreachable("unreadable answer (not a JSON object)")
        return response.status_code, data

    @staticmethod
    def _order_result(data: dict) -> UpstreamResult:
        status = STATUS_MAP.get(data.get("status"))
        if status is None or not data.get("order_no"):
            raise UpstreamUnreachable(f"unexpected upstream order status {data.get('status')!r}")
        secrets = data.get("card_secrets") or []
        if status == SUCCESS and data.get("kind") == "card":
            if not isinstance(secrets, list) or len(secrets) != data.get("quantity"):
                # Delivered but the secrets did not come with it: not usable yet, ask again later.
                return UpstreamResult(status=PROCESSING, trade_no=str(data["order_no"]),
                                      message="delivered upstream; card secrets not received")
        return UpstreamResult(status=status, trade_no=str(data["order_no"])[:64],
                              message=f"上游订单状态 {data.get('status')}",  # i18n-keep: data
                              card_secrets=tuple(str(s) for s in secrets) if status == SUCCESS else ())

    def submit(self, order_no: str, code: str, account: str, quantity: int) -> UpstreamResult:
        if not code.isascii() or not code.isdigit():
            return UpstreamResult(status=FAILED, message=f"mapping code {code!r} is not an upstream product id")
        notify_url = self.connection.notify_url
        http, data = self._send(self.client.create_order, order_no, int(code), quantity, account=account or None,
                                notify_url=notify_url)
        if http in (200, 201):
            return self._order_result(data)
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        if http == 409 and error.get("code") == "out_trade_no_conflict":
            # The upstream holds this order number from an earlier submit with other details (a changed
            # notify_url, say): that order is ours and may credit; report where it stands, never a failure.
            return self.query(order_no)
        # Any other 4xx is a business refusal (insufficient_balance, out_of_stock, product_unavailable, ...):
        # the order was not created there and never will be under this request.
        return UpstreamResult(status=FAILED, message=f"{error.get('code', http)}: {error.get('message', '')}"[:255])

    def query(self, order_no: str) -> UpstreamResult:
        http, data = self._send(self.client.order_by_out_trade_no, order_no)
        if http == 404:
            return UpstreamResult(status=NOT_FOUND, message="upstream has no such order")
        if http != 200:
            raise UpstreamUnreachable(f"query refused: HTTP {http}: {data.get('error')}"[:255])
        return self._order_result(data)

    def parse_callback(self, headers: dict, body: bytes) -> CallbackResult:
        """The upstream's order callback (app/openapi/callbacks.py): order_json without secrets plus
        `notified_status`, signed with our key's secret over the notify_url's path."""
        if len(body) > CALLBACK_MAX_BYTES:
            raise InvalidCallback("callback body too large")
        verify_signed_callback(headers, body, self.connection.app_key, self.connection.secret,
                               notify_path(self.connection))
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidCallback("callback body is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("out_trade_no"), str) or not data["out_trade_no"]:
            raise InvalidCallback("callback names no out_trade_no")
        upstream_status = data.get("notified_status") or data.get("status")
        status = STATUS_MAP.get(upstream_status)
        if status is None:
            raise InvalidCallback(f"callback status {upstream_status!r} is not one we know")
        order_no, trade_no = data["out_trade_no"][:64], str(data.get("order_no") or "")[:64] or None
        card_secrets: tuple[str, ...] = ()
        if status == SUCCESS and data.get("kind") == "card":
            # Callbacks never carry secrets; fetch them with a signed query. If that fails, report processing:
            # the poll will fetch them, rather than delivering an order without its cards.
            try:
                fetched = self.query(order_no)
            except UpstreamUnreachable:
                fetched = UpstreamResult(status=PROCESSING, trade_no=trade_no)
            status, card_secrets = fetched.status, fetched.card_secrets
        return CallbackResult(order_no=order_no, status=status, trade_no=trade_no,
                              message=f"上游订单状态 {upstream_status}", card_secrets=card_secrets,  # i18n-keep: data
                              answer="success")

    def query_balance(self) -> int:
        http, data = self._send(self.client.balance)
        balance = data.get("balance")
        if http != 200 or isinstance(balance, bool) or not isinstance(balance, int):
            raise UpstreamUnreachable(f"balance: unreadable answer (HTTP {http})")
        return balance

    def list_stock(self) -> list[StockItem]:
        """The upstream reports stock only as in_stock (yes/no): in stock is "not reported" (None), else 0."""
        http, data = self._send(self.client.products)
        products = data.get("products")
        if http != 200 or not isinstance(products, list):
            raise UpstreamUnreachable(f"products: unreadable answer (HTTP {http})")
        items = []
        for p in products:
            if not isinstance(p, dict) or isinstance(p.get("id"), bool) or not isinstance(p.get("id"), int):
                continue
            price = p.get("price")
            items.append(StockItem(code=str(p["id"]), name=str(p.get("name") or ""),
                                   stock=None if p.get("in_stock") else 0,
                                   price=price if isinstance(price, int) and not isinstance(price, bool) else None,
                                   available=True,  # listed: on sale to us there
                                   extra={k: p.get(k) for k in ("kind", "category", "face_price", "max_per_order")}))
        return items


def _error_text(response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return response.text[:120]
    return str(error.get("code") if isinstance(error, dict) else error)

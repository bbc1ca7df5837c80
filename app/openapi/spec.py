"""The Open API described as OpenAPI 3.0: served at /open/v1/openapi.json and rendered on the docs page."""
from __future__ import annotations

SIGNING = """Every request except this document is signed with the API key's secret:

* `X-App-Key`: the app key
* `X-Timestamp`: unix seconds; more than 300 s from the server's clock is refused
* `X-Nonce`: 16-64 printable characters, never reused within the window
* `X-Signature`: lowercase hex HMAC-SHA256(secret, STRING), where STRING is
  `METHOD + "\\n" + PATH + "\\n" + TIMESTAMP + "\\n" + NONCE + "\\n" + SHA256HEX(BODY)`

PATH excludes the query string; BODY is the raw request body (empty for GET). A bad signature, a stale or future
timestamp, a reused nonce, an unknown or revoked key, or an address outside the key's IP allow-list is answered
401. Amounts are integers in fen (1 CNY = 100 fen). Callbacks to `notify_url` are POSTed with the same four
headers, signed with the same secret (PATH is the notify_url's path), when an order becomes delivered, failed,
refunded, closed or disputed; a 2xx answer stops the retries (after 15 s, 1 m, 5 m, 30 m, 2 h, 6 h)."""

SECRETS_FILE = """One of the caller's own orders, delivered or disputed: its card secrets, streamed.  # i18n-keep: data

* `format=txt` (default): `text/plain; charset=utf-8`, one secret per line (CRLF), exactly as delivered.
* `format=csv`: `text/csv; charset=utf-8` with a BOM, CRLF, a header row `订单号,商品,卡密,到账时间` (order number,
  product, secret, delivery time in the business time zone). A cell starting with `=`, `+`, `-`, `@`, tab or CR gets
  a leading apostrophe so no spreadsheet runs it as a formula: use TXT to import the exact secrets.

Every download is audited and counted on the order. A reusable secret's use (循环卡密) in the file counts as shown
to the buyer: a later refund no longer gives that use back."""

RISK_FEED = """For partner platforms, with a partner key (an agent's key is answered 403 forbidden_scope).

`{"feed": {...}, "signature": BASE64}`: the signature is Ed25519 by the publisher's key over the feed object
serialised as canonical JSON (keys sorted, no spaces, ASCII). Each entry carries `key_id` (the shared key it is
hashed under), `kind`, `value` = lowercase hex HMAC-SHA256(shared key, FAMILY ":" NORMALISED VALUE) (FAMILY is
`contact` for phones and contacts, else the kind; phones in E.164), `reason`, `evidence`, `first_seen`,
`last_seen`, `expires_at` and, for entries removed since `since`, `removed: true`. No value is ever in plaintext.
`since` (ISO time or unix seconds) gives only what changed after it: use the previous feed's `generated_at`."""

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {
    "error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "example": "insufficient_balance"},
        "message": {"type": "string"}}}}}

ORDER = {"type": "object", "required": ["order_no", "product_id", "quantity", "unit_price", "amount", "status"],
         "properties": {
             "order_no": {"type": "string"},
             "out_trade_no": {"type": "string", "nullable": True},
             "product_id": {"type": "integer"},
             "product_name": {"type": "string"},
             "kind": {"type": "string", "enum": ["card", "direct", "manual"]},
             "quantity": {"type": "integer", "minimum": 1},
             "unit_price": {"type": "integer", "description": "fen"},
             "amount": {"type": "integer", "description": "fen"},
             "currency": {"type": "string", "enum": ["CNY"]},
             "status": {"type": "string", "enum": ["pending_payment", "paid", "delivering", "delivered", "failed",
                                                   "refunded", "closed", "disputed", "reviewing"],
                        "description": "reviewing: paid and held by risk control until staff approve (then "
                                       "delivered) or reject (then refunded); callbacks only at a final status"},
             "account": {"type": "string", "nullable": True},
             "upstream_status": {"type": "string", "nullable": True,
                                 "enum": ["submitting", "submitted", "processing", "success", "failed", "unknown",
                                          None],
                                 "description": "direct top-ups: where the supplier stands"},
             "created_at": {"type": "string", "format": "date-time"},
             "paid_at": {"type": "string", "format": "date-time", "nullable": True},
             "delivered_at": {"type": "string", "format": "date-time", "nullable": True},
             "card_secrets": {"type": "array", "items": {"type": "string"},
                              "description": "card products (and direct products an upstream delivered as card "
                                             "secrets), once delivered"}}}

PRODUCT = {"type": "object", "required": ["id", "name", "kind", "price", "in_stock"], "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "category": {"type": "string"},
    "kind": {"type": "string", "enum": ["card", "direct", "manual"]},
    "face_price": {"type": "integer", "description": "fen"},
    "price": {"type": "integer", "description": "the caller's price in fen"},
    "in_stock": {"type": "boolean"}, "max_per_order": {"type": "integer"}}}

ORDER_REQUEST = {"type": "object", "required": ["out_trade_no", "product_id", "quantity"],
                 "additionalProperties": False, "properties": {
                     "out_trade_no": {"type": "string", "pattern": "^[A-Za-z0-9_\\-.:]{1,64}$",
                                      "description": "your order number; idempotency key per agent"},
                     "product_id": {"type": "integer", "minimum": 1},
                     "quantity": {"type": "integer", "minimum": 1},
                     "account": {"type": "string", "minLength": 1, "maxLength": 128,
                                 "description": "top-up target (required for direct products)"},
                     "notify_url": {"type": "string", "format": "uri", "maxLength": 512}}}


def _error(description: str) -> dict:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


COMMON_ERRORS = {"400": _error("invalid request"), "401": _error("signature, key, timestamp, nonce or address refused"),
                 "403": _error("agent disabled"), "429": _error("rate limited; see Retry-After")}


def build_spec() -> dict:
    order_ref = {"$ref": "#/components/schemas/Order"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Kameng Open API", "version": "1.0.0", "description": SIGNING},
        "servers": [{"url": "/"}],
        "security": [{"AppKey": [], "Timestamp": [], "Nonce": [], "Signature": []}],
        "paths": {
            "/open/v1/products": {"get": {
                "operationId": "listProducts", "summary": "Products with the caller's price and stock",
                "responses": {"200": _ok("products", {"type": "object", "required": ["products"], "properties": {
                    "products": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}}}}),
                    **COMMON_ERRORS}}},
            "/open/v1/balance": {"get": {
                "operationId": "getBalance", "summary": "Wallet balance, pending commission and frozen, in fen",
                "responses": {"200": _ok("balances", {"type": "object", "required": ["balance", "pending", "frozen"],
                                                      "properties": {"balance": {"type": "integer"},
                                                                     "pending": {"type": "integer"},
                                                                     "frozen": {"type": "integer"}}}),
                              **COMMON_ERRORS}}},
            "/open/v1/orders": {
                "post": {
                    "operationId": "createOrder",
                    "summary": "Buy from the wallet; idempotent per out_trade_no",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/OrderRequest"}}}},
                    "responses": {
                        "201": _ok("order created: card orders come back delivered with their secrets; direct "
                                   "top-ups come back paid and are submitted to a supplier, then become delivered, "
                                   "or failed and refunded to the wallet (follow notify_url or GET the order)",
                                   order_ref),
                        "200": _ok("the same request again: the same order", order_ref),
                        "402": _error("insufficient_balance"),
                        "404": _error("product_unavailable"),
                        "409": _error("out_of_stock (for direct products: no supplier can take it now), or "
                                      "out_trade_no_conflict (same out_trade_no, other body)"),
                        "422": _error("unsupported_product_kind (manual products)"),
                        **COMMON_ERRORS,
                        "400": _error("invalid_request, or invalid_notify_url (not an http(s) URL with a host, or "
                                      "longer than 512 characters)"),
                        "403": _error("daily_limit_exceeded, agent disabled, risk_blocked (refused by risk control),"
                                      " risk_limit (a risk limit exceeded) or risk_hold (the agent is held for "
                                      "review)")}},
                "get": {
                    "operationId": "findOrderByOutTradeNo", "summary": "One of the caller's orders by out_trade_no",
                    "parameters": [{"name": "out_trade_no", "in": "query", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {"200": _ok("order", order_ref), "404": _error("not found"), **COMMON_ERRORS}}},
            "/open/v1/orders/{order_no}": {"get": {
                "operationId": "getOrder", "summary": "One of the caller's orders by order number",
                "parameters": [{"name": "order_no", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _ok("order", order_ref), "404": _error("not found"), **COMMON_ERRORS}}},
            "/open/v1/orders/{order_no}/secrets": {"get": {
                "operationId": "downloadOrderSecrets",
                "summary": "Bulk extraction (批量提卡): a delivered order's card secrets as a file",  # i18n-keep: data
                "description": SECRETS_FILE,
                "parameters": [
                    {"name": "order_no", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["txt", "csv"], "default": "txt"}}],
                "responses": {
                    "200": {"description": "the file (Content-Disposition: attachment)", "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}}}},
                    "404": _error("not found (also another agent's order)"),
                    "409": _error("order_not_delivered (no secrets yet, or refunded)"),
                    **COMMON_ERRORS,
                    "400": _error("invalid_format (format other than txt or csv), or no_secrets")}}},
            "/open/v1/risk/feed": {"get": {
                "operationId": "getRiskFeed",
                "summary": "Partner platforms: the signed shared risk list (共享名单), partner keys only",
                "description": RISK_FEED,
                "parameters": [{"name": "since", "in": "query", "required": False,
                                "schema": {"type": "string", "example": "2026-12-01T00:00:00Z"}}],
                "responses": {
                    "200": _ok("the signed feed document", {"type": "object", "required": ["feed", "signature"],
                                                            "properties": {"feed": {"type": "object"},
                                                                           "signature": {"type": "string"}}}),
                    "409": _error("feed_unavailable (no publisher identity, sharing key or legal basis yet)"),
                    **COMMON_ERRORS,
                    "400": _error("invalid_request (since is not an ISO time or unix seconds)"),
                    "403": _error("forbidden_scope (an agent's key: only partner keys may pull the feed)")}}},
        },
        "components": {
            "schemas": {"Error": ERROR, "Order": ORDER, "Product": PRODUCT, "OrderRequest": ORDER_REQUEST},
            "securitySchemes": {
                "AppKey": {"type": "apiKey", "in": "header", "name": "X-App-Key"},
                "Timestamp": {"type": "apiKey", "in": "header", "name": "X-Timestamp"},
                "Nonce": {"type": "apiKey", "in": "header", "name": "X-Nonce"},
                "Signature": {"type": "apiKey", "in": "header", "name": "X-Signature",
                              "description": "HMAC-SHA256, see the description above"}},
        },
    }

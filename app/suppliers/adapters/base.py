"""One interface for every upstream supplier protocol; adapters exchange these small dataclasses.

Rules every adapter keeps:
- `submit` sends OUR order number; the upstream dedupes on it, so submitting the same order again is safe.
- A timeout, a refused connection, a 5xx or an answer it cannot read is never a failure: raise
  `UpstreamUnreachable` and the order stays `unknown` until a query or a callback says what happened.
- `failed` is returned only when the upstream definitely did not and will not credit the account.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

# What an upstream can say about one order. not_found: it never received it (safe to submit again).
SUBMITTED, PROCESSING, SUCCESS, FAILED, NOT_FOUND = "submitted", "processing", "success", "failed", "not_found"


class UpstreamUnreachable(Exception):
    """No usable answer (timeout, network error, 5xx, unreadable body): the outcome is unknown."""


class InvalidCallback(Exception):
    """A callback that is not signed by this supplier, or does not parse."""


class CancelNotSupported(Exception):
    """The upstream's protocol has no way to withdraw an order: whatever it is doing, it may still credit."""


@dataclass(frozen=True)
class Connection:
    """What an adapter needs to talk to one supplier (the secret already decrypted)."""
    supplier_id: int
    protocol: str
    endpoint: str
    app_key: str
    secret: str
    timeout: float = 10.0
    notify_url: str | None = None  # where this supplier should POST callbacks for our orders


@dataclass(frozen=True)
class UpstreamResult:
    status: str  # SUBMITTED, PROCESSING, SUCCESS, FAILED, NOT_FOUND
    trade_no: str | None = None  # the upstream's own order number
    message: str = ""
    card_secrets: tuple[str, ...] = ()  # docking a card product: the secrets the upstream delivered


@dataclass(frozen=True)
class CallbackResult:
    order_no: str  # ours, as we submitted it
    status: str  # SUBMITTED, PROCESSING, SUCCESS, FAILED
    trade_no: str | None = None
    message: str = ""
    card_secrets: tuple[str, ...] = ()
    answer: str = "success"  # the body the upstream expects back once we recorded it


@dataclass(frozen=True)
class StockItem:
    code: str  # the product's code at the upstream
    name: str = ""
    stock: int | None = None  # None: not reported / unlimited
    price: int | None = None  # our cost there, fen
    available: bool = True
    extra: dict = field(default_factory=dict)


class SupplierAdapter(ABC):
    protocol: str = ""

    def __init__(self, connection: Connection):
        self.connection = connection

    @abstractmethod
    def submit(self, order_no: str, code: str, account: str, quantity: int) -> UpstreamResult:
        """Ask the upstream to credit `account`; idempotent on order_no at the upstream."""

    @abstractmethod
    def query(self, order_no: str) -> UpstreamResult:
        """Where the upstream stands on our order (NOT_FOUND if it never received it)."""

    def cancel(self, order_no: str) -> UpstreamResult:
        """Ask the upstream to withdraw our order (撤单) before it credits. The answer is where the order stands
        afterwards: FAILED only when it will never credit (withdrawn now, failed before, or never received and now
        barred from being submitted), SUCCESS when it already credited, SUBMITTED / PROCESSING when it can no longer
        be withdrawn. Raise UpstreamUnreachable when the outcome is unknown, CancelNotSupported when the protocol
        has no such call (the default)."""
        raise CancelNotSupported(f"{self.protocol} upstreams cannot withdraw an order")

    @abstractmethod
    def parse_callback(self, headers: dict, body: bytes) -> CallbackResult:
        """Verify (constant time) and parse a callback; raise InvalidCallback when it is not this supplier's."""

    @abstractmethod
    def query_balance(self) -> int:
        """Our prepaid balance at the upstream, fen."""

    @abstractmethod
    def list_stock(self) -> list[StockItem]:
        """The upstream's products with stock and price, for the stock sync."""

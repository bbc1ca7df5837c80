"""Errors of the supplier domain (直充): stable codes the Open API, the storefront and the forms show alike."""
from __future__ import annotations

from app.catalog.errors import OutOfStock
from app.errors import KamengError, NotFound, ValidationError


class InvalidAccount(ValidationError):
    code = "invalid_account"


class NoSupplierAvailable(OutOfStock):
    """No active supplier with a protocol maps the product with stock (and enough balance there)."""
    code = "out_of_stock"


class SupplierNotFound(NotFound):
    code = "supplier_not_found"


class AttemptNotFound(NotFound):
    """A callback naming an order that was never submitted to the supplier that sent it."""
    code = "attempt_not_found"


class CallbackRejected(KamengError):
    code = "invalid_callback"
    status = 401

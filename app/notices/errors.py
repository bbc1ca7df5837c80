"""Delivery notices' errors: below the service, the SMTP and SMS senders and the settings, which all raise or
catch them."""
from __future__ import annotations

from app.errors import ValidationError


class InvalidEmail(ValidationError):
    code = "invalid_email"


class DeliveryError(Exception):
    """A notice that did not leave. `temporary`: worth another try (server down, timeout, 4xx); otherwise the
    refusal is final (a 5xx refusal of the address, a number the provider calls illegal)."""

    def __init__(self, message: str, temporary: bool = True):
        super().__init__(message)
        self.message, self.temporary = message, temporary

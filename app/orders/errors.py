from app.errors import Conflict, KamengError, ValidationError


class InvalidQuantity(ValidationError):
    code = "invalid_quantity"


class DailyLimitExceeded(KamengError):
    code = "daily_limit_exceeded"
    status = 403


class UnsupportedProductKind(KamengError):
    code = "unsupported_product_kind"
    status = 422


class InvalidTransition(Conflict):
    code = "invalid_transition"


class InvalidContact(ValidationError):
    code = "invalid_contact"

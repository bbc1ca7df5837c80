"""Agent shops' error codes: the storefront API, the portal forms and the CLI show them the same way."""
from app.errors import Conflict, Forbidden, NotFound, ValidationError


class ShopNotFound(NotFound):
    code = "shop_not_found"


class ShopClosed(Forbidden):
    """Suspended by an admin, or its agent disabled or no longer on a tier that may open a shop."""
    code = "shop_closed"


class ShopNotAllowed(Forbidden):
    """The agent's tier may not open a shop (may_open_shop)."""
    code = "shop_not_allowed"


class ShopExists(Conflict):
    code = "shop_exists"


class MarkupOutOfBounds(ValidationError):
    """A markup below the agent's own price (negative) or outside the admin's bounds."""
    code = "markup_out_of_bounds"


class InvalidDomain(ValidationError):
    code = "invalid_domain"


class DomainTaken(Conflict):
    code = "domain_taken"

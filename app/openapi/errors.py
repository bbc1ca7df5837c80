from app.errors import Conflict, KamengError, ValidationError


class Unauthorized(KamengError):
    code = "unauthorized"
    status = 401


class OutTradeNoConflict(Conflict):
    code = "out_trade_no_conflict"


class InvalidNotifyUrl(ValidationError):
    """notify_url is not an http(s) URL with a host (its address is checked when the callback connects)."""
    code = "invalid_notify_url"

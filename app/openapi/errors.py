from app.errors import Conflict, KamengError


class Unauthorized(KamengError):
    code = "unauthorized"
    status = 401


class OutTradeNoConflict(Conflict):
    code = "out_trade_no_conflict"

from app.errors import Conflict, KamengError


class LedgerError(KamengError):
    code = "ledger_error"
    status = 500


class UnbalancedJournal(LedgerError):
    code = "unbalanced_journal"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class InsufficientBalance(KamengError):
    code = "insufficient_balance"
    status = 402

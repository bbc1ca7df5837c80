"""One root exception with a stable code, shown the same way by forms, the Open API and the CLI.

The message is for people: services pass it through gettext (`_("分站不存在")`), so it reads in the language of
the request that raised it (Chinese by default, and in the CLI and jobs, which have no request). The code is for
programs and stays the same in every language."""
from __future__ import annotations


class KamengError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        message = str(message)  # renders a lazy_gettext message now, in the language of the raising request
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class ValidationError(KamengError):
    code = "invalid_request"


class NotFound(KamengError):
    code = "not_found"
    status = 404


class Forbidden(KamengError):
    code = "forbidden"
    status = 403


class Conflict(KamengError):
    code = "conflict"
    status = 409


class TooManyAttempts(KamengError):
    """A limit on tries (real-name submissions, order passwords) is reached; the message says when to try again."""
    code = "too_many_attempts"
    status = 429

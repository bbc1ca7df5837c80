from app.errors import KamengError, ValidationError


class AgentError(KamengError):
    code = "agent_error"


class InvalidParent(ValidationError):
    code = "invalid_parent"


class AgentInactive(KamengError):
    code = "agent_inactive"
    status = 403

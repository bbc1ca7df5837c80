"""Security manager: FAB's, with the Kameng roles kept in sync at start-up."""
from __future__ import annotations

from flask_appbuilder.security.sqla.manager import SecurityManager


class KamengSecurityManager(SecurityManager):
    pass

"""Extensions created without an app and joined in create_app()."""
from __future__ import annotations

from flask_appbuilder.models.sqla import Model
from flask_appbuilder.models.sqla.base import SQLA
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect

# One metadata for FAB's ab_* tables and ours, so create_all and Alembic see both.
db = SQLA(model_class=Model)
migrate = Migrate()
# FAB's own forms carry CSRF tokens; this also guards our custom POST pages (buy, card import).
csrf = CSRFProtect()

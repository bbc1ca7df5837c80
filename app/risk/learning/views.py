"""风控模型: the model versions, read only, with their holdout figures beside the active rules'; an admin promotes a
version from its page, and the promotion re-checks that it beats the rules (app.risk.learning.model.promote)."""
from __future__ import annotations

import json

from flask import flash, g, redirect, url_for
from flask_appbuilder import ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _

from app.errors import KamengError
from app.risk.learning import model
from app.risk.models import RiskModel
from app.views_common import ReadableColumnsMixin, text_of

STATUS_TEXT = {"shadow": _("影子（只记录）"), "active": _("生效"), "retired": _("已退役")}


def _figures(raw: str) -> str:
    values = json.loads(raw or "{}")
    if not values:
        return "-"
    return (f"PR-AUC {values.get('pr_auc', 0):.4f} · {gettext('1% 审核率召回')} {values.get('recall_at_1pct', 0):.4f}"
            f" · n={values.get('n', 0)} ({values.get('positives', 0)})")


class RiskModelView(ReadableColumnsMixin, ModelView):
    """Versions newest first; no add, edit or delete (training makes them, promotion changes their status)."""
    datamodel = SQLAInterface(RiskModel)
    route_base = "/risk-models"
    base_permissions = ["can_list", "can_show", "can_promote"]
    list_title = show_title = _("风控模型")
    list_columns = ["version", "status", "created_at", "seed", "metrics", "rules_metrics", "promoted_at"]
    show_columns = list_columns + ["promoted_by", "retired_at", "digest"]
    search_columns = ["version", "status", "created_at"]
    label_columns = {"version": _("版本"), "status": _("状态"), "created_at": _("训练时间"), "seed": _("随机种子"),
                     "metrics": _("模型（留出集）"), "rules_metrics": _("生效规则（同一留出集）"),
                     "promoted_at": _("启用时间"), "promoted_by": _("启用人"), "retired_at": _("停用时间"),
                     "digest": _("模型摘要")}
    formatters_columns = {"status": text_of(STATUS_TEXT), "metrics": _figures, "rules_metrics": _figures}
    show_template = "kameng/risk/model_show.html"
    base_order = ("version", "desc")

    @expose("/promote/<int:pk>", methods=["POST"])
    @has_access
    def promote(self, pk: int):
        row = self.datamodel.get(pk)
        if row is None:
            flash(gettext("模型版本不存在"), "danger")
            return redirect(url_for("RiskModelView.list"))
        try:
            model.promote(row.version, g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
        else:
            flash(gettext("模型 v%(version)s 已启用", version=row.version), "success")
        return redirect(url_for("RiskModelView.show", pk=pk))


def register(appbuilder) -> None:
    appbuilder.add_view(RiskModelView, "风控模型", icon="fa-line-chart", category="风控")

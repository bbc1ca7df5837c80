"""团队业绩奖 screens: the rules (an audited admin form; a new rule is off until switched on) and the awards."""
from __future__ import annotations

from flask_appbuilder import ModelView
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from app.auditing import AuditedViewMixin
from app.forms import PercentField, YuanField, checkbox
from app.money import format_fen
from app.network.models import TeamBonusAward, TeamBonusRule
from app.views_common import ReadableColumnsMixin

RULE_COLUMNS = ["name", "min_monthly_gmv", "rate_bp", "active"]
RULE_LABELS = {"name": _("名称"), "min_monthly_gmv": _("月团队业绩门槛（元）"), "rate_bp": _("奖励比例 %"),
               "active": _("启用"), "created_at": _("创建时间")}


def _rule_fields() -> dict:
    return {
        "name": StringField(RULE_LABELS["name"], validators=[DataRequired(), Length(max=64)]),
        "min_monthly_gmv": YuanField(RULE_LABELS["min_monthly_gmv"], validators=[DataRequired()], min_fen=1),
        "rate_bp": PercentField(RULE_LABELS["rate_bp"], validators=[DataRequired()], min_bp=1, max_bp=1000),
        "active": checkbox(RULE_LABELS["active"]),
    }


class TeamBonusRuleView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(TeamBonusRule)
    route_base = "/team-bonus-rules"
    audit_target = "team_bonus_rule"
    audit_columns = RULE_COLUMNS
    list_title = show_title = add_title = edit_title = _("团队业绩奖规则")
    list_columns = RULE_COLUMNS + ["created_at"]
    add_columns = edit_columns = show_columns = RULE_COLUMNS
    label_columns = RULE_LABELS
    formatters_columns = {"min_monthly_gmv": format_fen, "rate_bp": lambda bp: f"{bp / 100:.2f}%"}
    add_form_extra_fields = _rule_fields()
    edit_form_extra_fields = _rule_fields()
    base_order = ("id", "asc")
    description_columns = {"active": _("默认关闭；启用后每月 1 日按上月团队业绩发放到代理余额")}


class TeamBonusAwardView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(TeamBonusAward)
    route_base = "/team-bonus-awards"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("团队业绩奖发放记录")
    list_columns = show_columns = ["month", "rule_id", "agent_id", "gmv", "amount", "created_at"]
    search_columns = ["month"]
    label_columns = {"month": _("月份"), "rule_id": _("规则"), "agent_id": _("代理"), "gmv": _("团队业绩"),
                     "amount": _("奖励金额"), "created_at": _("发放时间")}
    formatters_columns = {"gmv": format_fen, "amount": format_fen}
    base_order = ("id", "desc")


def register(appbuilder, category: str) -> None:
    appbuilder.add_view(TeamBonusRuleView, "团队业绩奖规则", icon="fa-trophy", category=category)
    appbuilder.add_view(TeamBonusAwardView, "团队业绩奖发放", icon="fa-gift", category=category)


__all__ = ["register"]

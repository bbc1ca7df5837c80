"""Admin screens for tiers and agents, and the wallet adjustment form."""
from __future__ import annotations

from flask import flash, g, redirect, request
from flask_appbuilder import ModelView, SimpleFormView
from flask_appbuilder.fields import QuerySelectField
from flask_appbuilder.fieldwidgets import Select2Widget
from flask_appbuilder.forms import DynamicForm
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import select
from wtforms import StringField
from wtforms.validators import DataRequired, InputRequired, Length, Optional, ValidationError

from app.agents import service
from app.agents.models import Agent, Tier
from app.auditing import AuditedViewMixin, flush_or_refuse
from app.errors import KamengError
from app.extensions import db
from app.forms import PercentField, YuanField, checkbox, int_range
from app.ledger import service as ledger
from app.money import format_fen
from app.views_common import ReadableColumnsMixin, blind_index_interface, personal_value

TIER_COLUMNS = ["name", "rank", "discount_bp", "may_recruit", "may_withdraw", "min_withdrawal", "withdrawal_fee_bp",
                "direct_commission_bp", "indirect_commission_bp", "daily_limit", "settle_days", "may_open_shop"]
TIER_LABELS = {
    "name": _("名称"), "rank": _("级别（越大越高）"), "discount_bp": _("拿货折扣 %"), "may_recruit": _("可发展下级"),
    "may_withdraw": _("可提现"), "min_withdrawal": _("最低提现（元）"), "withdrawal_fee_bp": _("提现手续费 %"),
    "direct_commission_bp": _("直推佣金 %"), "indirect_commission_bp": _("间推佣金 %"),
    "daily_limit": _("每日采购限额（元，0 为不限）"), "settle_days": _("结算天数 T+N"),
    "discount_display": _("拿货折扣"), "daily_limit_display": _("每日限额"),
    "may_open_shop": _("可开设分站"),
}


def _tier_fields() -> dict:
    return {
        "discount_bp": PercentField(TIER_LABELS["discount_bp"], min_bp=1, max_bp=20000,
                                    description=_("代理价 = 面值 × 折扣，例如 95 表示 95 折")),
        "withdrawal_fee_bp": PercentField(TIER_LABELS["withdrawal_fee_bp"]),
        "direct_commission_bp": PercentField(TIER_LABELS["direct_commission_bp"], max_bp=5000),
        "indirect_commission_bp": PercentField(TIER_LABELS["indirect_commission_bp"], max_bp=5000),
        "min_withdrawal": YuanField(TIER_LABELS["min_withdrawal"]),
        "daily_limit": YuanField(TIER_LABELS["daily_limit"]),
        "may_recruit": checkbox(TIER_LABELS["may_recruit"]),
        "may_withdraw": checkbox(TIER_LABELS["may_withdraw"]),
        "may_open_shop": checkbox(TIER_LABELS["may_open_shop"]),
    }


class TierView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(Tier)
    route_base = "/tiers"
    audit_target = "tier"
    audit_columns = TIER_COLUMNS
    list_title = _("代理等级")
    show_title = add_title = edit_title = _("代理等级")
    list_columns = ["name", "rank", "discount_display", "may_recruit", "may_withdraw", "daily_limit_display"]
    add_columns = edit_columns = TIER_COLUMNS
    show_columns = TIER_COLUMNS
    label_columns = TIER_LABELS
    order_columns = ["name", "rank"]
    base_order = ("rank", "desc")
    add_form_extra_fields = _tier_fields()
    edit_form_extra_fields = _tier_fields()
    validators_columns = {"rank": [int_range(0, 1_000_000)], "settle_days": [int_range(0, 90)]}
    list_template = "kameng/tier_list.html"
    edit_template = "kameng/tier_edit.html"

    def render_template(self, template, **kwargs):
        if template in (self.list_template, self.edit_template):
            # the compliance banner (anti-pyramid rules): levels past two, indirect > direct, a high total share
            from app.network.commission_views import compliance_warnings
            kwargs["compliance_warnings"] = compliance_warnings()
        return super().render_template(template, **kwargs)

    def pre_add(self, item):
        _check_tier(item)
        super().pre_add(item)

    def pre_update(self, item):
        _check_tier(item)
        super().pre_update(item)


def _check_tier(item: Tier) -> None:
    required = {"discount_bp": item.discount_bp, "min_withdrawal": item.min_withdrawal,
                "withdrawal_fee_bp": item.withdrawal_fee_bp, "daily_limit": item.daily_limit,
                "direct_commission_bp": item.direct_commission_bp,
                "indirect_commission_bp": item.indirect_commission_bp}
    missing = [str(TIER_LABELS[k]) for k, v in required.items() if v is None]
    if missing:
        raise ValueError(gettext("请填写：%(fields)s", fields=gettext("、").join(missing)))
    if item.settle_days is None or not 0 <= item.settle_days <= 90:
        raise ValueError(gettext("结算天数必须在 0 到 90 之间"))
    if item.rank is None:
        item.rank = 0


AGENT_LABELS = {"name": _("代理名称"), "user": _("登录账号"), "parent": _("上级"), "tier": _("等级"),
                "path": _("路径"), "depth": _("层级"), "active": _("启用"), "phone": _("手机号"),
                "created_at": _("注册时间"), "wallet_display": _("余额"), "phone_hash": _("手机号")}


def phone_field() -> StringField:
    """The phone as a one-line input (its column is encrypted Text, which FAB would make a text area)."""
    return StringField(AGENT_LABELS["phone"], validators=[Optional(), Length(max=32)], filters=[_strip_or_none])


def _strip_or_none(value):
    return (value.strip() or None) if isinstance(value, str) else value


def _agent_fields() -> dict:
    return {"active": checkbox(AGENT_LABELS["active"], default=True), "phone": phone_field()}


def _check_login_free(item: Agent) -> None:
    """A login belongs to at most one agent (agent.user_id is unique): say so instead of a database error."""
    if item.user is None:
        return
    taken = db.session.scalar(select(Agent.id).where(Agent.user_id == item.user.id, Agent.id != (item.id or 0)))
    if taken:
        raise ValueError(gettext("登录账号 %(username)s 已绑定其他代理", username=item.user.username))


class AgentView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    """Staff manage agents; the agent page shows the phone whole to support and the admin (they call agents about
    their accounts), masked to other staff (views_common.personal_value); the search finds an agent by phone in
    any spelling through its blind index."""
    datamodel = blind_index_interface(Agent, "phone_hash", ("phone_hash",))
    route_base = "/agents"
    audit_target = "agent"
    # parent moves are audited by the service as agent.move (with the old and new path). The phone is audited
    # as its blind index: the log records that it changed, never the number.
    audit_columns = ["name", "tier_id", "user_id", "phone_hash", "active"]
    # an agent always has ledger accounts (and history): switch it off, never delete it
    base_permissions = ["can_list", "can_show", "can_add", "can_edit"]
    list_title = show_title = add_title = edit_title = _("代理")
    list_columns = ["name", "user", "tier", "parent", "depth", "wallet_display", "active", "created_at"]
    show_columns = ["name", "user", "tier", "parent", "path", "depth", "phone", "wallet_display", "active",
                    "created_at"]
    add_columns = ["name", "user", "tier", "parent", "phone", "active"]
    edit_columns = ["name", "user", "tier", "parent", "phone", "active"]
    search_columns = ["name", "tier", "parent", "active", "created_at", "phone_hash"]
    label_columns = AGENT_LABELS
    base_order = ("id", "asc")
    formatters_columns = {"phone": personal_value}
    add_form_extra_fields = _agent_fields()
    edit_form_extra_fields = _agent_fields()

    def pre_add(self, item: Agent):
        # Not AuditedViewMixin.pre_add: the path needs the id, and the entry records the path.
        with db.session.no_autoflush:
            if item.tier is None:
                raise ValueError(gettext("请选择等级"))
            _check_login_free(item)
        parent = item.parent  # keep the relationship: setting it to None would null parent_id at the flush
        item.path = "/"
        item.depth = 0 if parent is None else parent.depth + 1
        db.session.add(item)
        flush_or_refuse()
        item.path = f"{parent.path if parent else '/'}{item.id}/"
        ledger.open_agent_accounts(item.id)
        from app.audit import service as audit
        audit.record("agent.create", "agent", item.id, None, {"name": item.name, "path": item.path})

    def pre_update(self, item: Agent):
        # Read the parent change before anything queries: an autoflush would write the new parent_id without
        # rewriting the subtree's paths.
        with db.session.no_autoflush:
            new_parent = item.parent
            new_parent_id = new_parent.id if new_parent else None
            old_parent_id = item.parent_id  # the foreign key still holds the old parent until the flush
            if new_parent_id != old_parent_id:
                item.parent = db.session.get(Agent, old_parent_id) if old_parent_id else None
            _check_login_free(item)
        if new_parent_id != old_parent_id:
            try:
                service.set_parent(item, new_parent_id)  # rewrites the subtree's paths, audits agent.move
            except KamengError as exc:
                raise ValueError(exc.message) from None
            item.parent = new_parent
        super().pre_update(item)


def _all_agents():
    return db.session.query(Agent).order_by(Agent.id)


def _nonzero(form, field):
    if field.data == 0:
        raise ValidationError(gettext("调整金额不能为 0"))


class WalletAdjustForm(DynamicForm):
    agent = QuerySelectField(_("代理"), query_func=_all_agents, get_pk_func=lambda a: a.id,
                             get_label=lambda a: f"{a.name} (#{a.id})",
                             widget=Select2Widget(), validators=[DataRequired()])
    # InputRequired, not DataRequired: DataRequired would replace "abc is not an amount" by "required"
    amount = YuanField(_("金额（元，正数加款，负数扣款）"), allow_negative=True,
                       validators=[InputRequired(), _nonzero])
    reason = StringField(_("原因"), validators=[DataRequired(), Length(max=255)])


class WalletAdjustView(SimpleFormView):
    """Admin credit or debit of an agent's wallet: a journal and an audit entry through the agents service."""
    route_base = "/wallet-adjust"
    form = WalletAdjustForm
    form_title = _("余额调整（加款 / 扣款）")

    def form_get(self, form):
        agent_id = request.args.get("agent_id", "")
        if agent_id.isdigit():
            form.agent.data = db.session.get(Agent, int(agent_id))

    def form_post(self, form):
        agent = form.agent.data
        try:
            service.adjust_wallet(agent.id, form.amount.data, form.reason.data, actor_id=g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
            return redirect(request.url)
        balance = ledger.agent_balances(agent.id)["wallet"]
        flash(
            gettext(
                "%(name)s：%(value)s 成功，当前余额 %(balance)s",
                name=agent.name,
                value=service.describe_adjustment(form.amount.data),
                balance=format_fen(balance),
            ),
            "success",
        )
        return redirect(request.url)

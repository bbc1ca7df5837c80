"""Commission screens: the staff list of settlement runs with an audited 立即结算 (settle now) button, every
commission (read only), the agent's own commissions (portal, scoped to itself, with totals per status), and the
compliance warning shown on the tier screens (China's rules on pyramid selling)."""
from __future__ import annotations

import functools

from flask import abort, current_app, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose
from flask_appbuilder.models.sqla.filters import FilterInFunction
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import func, select

from app.agents.models import Tier
from app.extensions import db
from app.money import format_fen
from app.network.models import Commission, SettlementRun
from app.scope import own_agent_ids
from app.views_common import ReadableColumnsMixin

ADMIN_CATEGORY = "代理与佣金"  # app.views.AGENTS
STATUS_TEXT = {"pending": _("待结算"), "frozen": _("维权冻结"), "settled": _("已结算"), "reversed": _("已冲回")}
RUN_STATUS_TEXT = {"running": _("进行中"), "done": _("已完成"), "failed": _("失败")}
TRIGGER_TEXT = {"scheduled": _("定时任务"), "manual": _("手动"), "cli": _("命令行")}
LEVEL_TEXT = {0: _("分站利润"), 1: _("直接"), 2: _("间接"), 3: _("三级")}


def format_bp(bp: int | None) -> str:
    return "" if bp is None else f"{bp / 100:.2f}%"


def _text(table):
    return lambda value: table.get(value, value)


# ----------------------------------------------------------------------------------------------- compliance
def compliance_warnings() -> list[str]:
    """What in the commission configuration may count as pyramid selling (empty when nothing does)."""
    cfg = current_app.config
    warnings = []
    levels = int(cfg.get("COMMISSION_MAX_LEVELS", 2))
    if levels > 2:
        warnings.append(gettext("佣金层级设为 %(levels)s 级：上线从下线销售中提成超过两级，可能被认定为传销。",
                                levels=levels))
    limit = int(cfg.get("COMMISSION_WARN_TOTAL_BP", 2000))
    for tier in db.session.scalars(select(Tier).order_by(Tier.rank.desc(), Tier.id)):
        direct, indirect = tier.direct_commission_bp or 0, tier.indirect_commission_bp or 0
        if indirect > direct:
            warnings.append(gettext("等级「%(tier)s」的间接佣金（%(indirect)s）高于直接佣金（%(direct)s）。",
                                    tier=tier.name, indirect=format_bp(indirect), direct=format_bp(direct)))
        if direct + indirect > limit:
            warnings.append(gettext("等级「%(tier)s」的直接与间接佣金合计 %(total)s，超过 %(limit)s。",
                                    tier=tier.name, total=format_bp(direct + indirect), limit=format_bp(limit)))
    return warnings


# ----------------------------------------------------------------------------------------------- staff screens
def _access_or_403(f):
    """Like FAB's has_access (the permission `can_<name>` on the view), but answers 403 to a logged-in user who
    lacks it (FAB redirects to the login page) and sends anonymous visitors to the login page."""
    f._permission_name = f.__name__

    @functools.wraps(f)
    def wrapper(self, *args, **kwargs):
        sm = self.appbuilder.sm
        if sm.has_access(f"can_{f._permission_name}", self.class_permission_name):
            return f(self, *args, **kwargs)
        user = getattr(g, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            abort(403)
        return redirect(url_for(sm.auth_view.__class__.__name__ + ".login", next=request.url))

    wrapper._permission_name = f._permission_name
    return wrapper


class SettleNowView(BaseView):
    """立即结算: settle every due commission now (Admin only); the run is audited by app.network.settlement."""
    route_base = "/settlement"
    default_view = "settle"

    @expose("/settle", methods=["POST"])
    @_access_or_403
    def settle(self):
        from app.network import settlement

        try:
            run = settlement.settle(trigger="manual", actor_id=g.user.id)
        except Exception as exc:  # the run is marked failed by settle(); show why
            db.session.rollback()
            flash(gettext("结算失败：%(error)s", error=str(exc)[:200]), "danger")
            return redirect(url_for("SettlementRunView.list"))
        flash(gettext("结算完成（#%(run)s）：%(count)s 笔佣金，共 %(amount)s，其中抵扣欠款 %(recovered)s",
                      run=run.id, count=run.settled_count, amount=format_fen(run.settled_amount),
                      recovered=format_fen(run.recovered_amount)), "success")
        return redirect(url_for("SettlementRunView.show", pk=run.id))


class SettlementRunView(ReadableColumnsMixin, ModelView):
    """结算记录: every settlement run with its report, newest first (read only)."""
    datamodel = SQLAInterface(SettlementRun)
    route_base = "/settlement-runs"
    base_permissions = ["can_list", "can_show"]
    list_template = "kameng/settlement_runs.html"
    list_title = show_title = _("结算记录")
    list_columns = ["id", "trigger", "actor", "cutoff", "settled_count", "settled_amount", "recovered_amount",
                    "status", "started_at", "finished_at"]
    show_columns = list_columns + ["error"]
    search_columns = ["trigger", "status", "started_at"]
    label_columns = {"id": _("编号"), "trigger": _("触发方式"), "actor": _("操作人"), "cutoff": _("截止时间"),
                     "settled_count": _("结算笔数"), "settled_amount": _("结算金额"),
                     "recovered_amount": _("抵扣欠款"), "status": _("状态"), "started_at": _("开始时间"),
                     "finished_at": _("完成时间"), "error": _("错误")}
    formatters_columns = {"settled_amount": format_fen, "recovered_amount": format_fen,
                          "status": _text(RUN_STATUS_TEXT), "trigger": _text(TRIGGER_TEXT)}
    base_order = ("id", "desc")

    def render_template(self, template, **kwargs):
        if template == self.list_template:
            kwargs["can_settle"] = self.appbuilder.sm.has_access("can_settle", "SettleNowView")
        return super().render_template(template, **kwargs)


COMMISSION_LABELS = {"order": _("订单"), "agent": _("代理"), "level": _("佣金层级"), "rate_bp": _("比例"),
                     "base_amount": _("订单实付"), "amount": _("佣金金额"), "status": _("状态"),
                     "settle_after": _("可结算时间"), "created_at": _("产生时间"), "settled_at": _("结算时间"),
                     "reversed_at": _("冲回时间"), "settlement_run_id": _("结算批次")}
COMMISSION_FORMATTERS = {"rate_bp": format_bp, "amount": format_fen, "base_amount": format_fen,
                         "status": _text(STATUS_TEXT), "level": _text(LEVEL_TEXT)}


class CommissionView(ReadableColumnsMixin, ModelView):
    """佣金明细: every commission (read only)."""
    datamodel = SQLAInterface(Commission)
    route_base = "/commissions"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("佣金明细")
    list_columns = ["order", "agent", "level", "rate_bp", "amount", "status", "settle_after", "created_at"]
    show_columns = ["order", "agent", "level", "rate_bp", "base_amount", "amount", "status", "settle_after",
                    "created_at", "settled_at", "reversed_at", "settlement_run_id"]
    search_columns = ["agent", "status", "order", "level", "settle_after"]
    label_columns = COMMISSION_LABELS
    formatters_columns = COMMISSION_FORMATTERS
    base_order = ("id", "desc")


# ----------------------------------------------------------------------------------------------- portal
def own_commission_order_ids():
    """Orders on which the current agent earned a commission (for the order search dropdown)."""
    return select(Commission.order_id).where(Commission.agent_id.in_(own_agent_ids()))


def commission_totals(agent_ids: list[int]) -> dict[str, int]:
    """Sum of commission amounts per status for these agents (every status present, 0 when none)."""
    totals = dict.fromkeys(STATUS_TEXT, 0)
    if agent_ids:
        rows = db.session.execute(select(Commission.status, func.coalesce(func.sum(Commission.amount), 0))
                                  .where(Commission.agent_id.in_(agent_ids)).group_by(Commission.status)).all()
        totals.update({status: int(total) for status, total in rows})
    return totals


class MyCommissionView(ReadableColumnsMixin, ModelView):
    """我的佣金: only the commissions paid to the logged-in agent itself (not its downline's), with totals."""
    datamodel = SQLAInterface(Commission)
    route_base = "/portal/my-commissions"
    base_permissions = ["can_list", "can_show"]
    base_filters = [["agent_id", FilterInFunction, own_agent_ids]]
    search_form_query_rel_fields = {"agent": [["id", FilterInFunction, own_agent_ids]],
                                    "order": [["id", FilterInFunction, own_commission_order_ids]]}
    list_template = "kameng/my_commissions.html"
    list_title = show_title = _("我的佣金")
    list_columns = ["order", "level", "rate_bp", "amount", "status", "settle_after"]
    show_columns = ["order", "level", "rate_bp", "base_amount", "amount", "status", "settle_after", "created_at",
                    "settled_at", "reversed_at"]
    search_columns = ["order", "status", "level", "settle_after"]
    label_columns = COMMISSION_LABELS
    formatters_columns = COMMISSION_FORMATTERS
    base_order = ("id", "desc")

    def render_template(self, template, **kwargs):
        if template == self.list_template:
            totals = commission_totals(own_agent_ids())
            kwargs["commission_totals"] = [(status, STATUS_TEXT[status], format_fen(totals[status]))
                                           for status in ("pending", "frozen", "settled", "reversed")]
        return super().render_template(template, **kwargs)


def register(appbuilder, portal_category: str) -> None:
    appbuilder.add_view(MyCommissionView, "我的佣金", icon="fa-money", category=portal_category)
    appbuilder.add_view(SettlementRunView, "结算记录", icon="fa-calendar-check-o", category=ADMIN_CATEGORY)
    appbuilder.add_view(CommissionView, "佣金明细", icon="fa-percent", category=ADMIN_CATEGORY)
    appbuilder.add_view_no_menu(SettleNowView)


__all__ = ["CommissionView", "MyCommissionView", "SettleNowView", "SettlementRunView",
           "compliance_warnings", "register"]

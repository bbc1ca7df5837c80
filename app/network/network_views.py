"""Screens for real-name verification and withdrawals: the agent's own pages (portal, scoped to itself), the
staff list of verifications (masked only), the withdrawal review queue (approve / reject / retry, audited) and
every withdrawal's status."""
from __future__ import annotations

from flask import flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _

from app.errors import KamengError, ValidationError
from app.extensions import db
from app.ledger.service import agent_balances
from app.money import format_fen, parse_yuan
from app.network import realname, withdrawals
from app.network.models import RealNameVerification, Withdrawal
from app.orders.service import clean_device_id
from app.scope import require_agent
from app.views_common import ReadableColumnsMixin, text_of

REVIEW_CATEGORY = "资金"  # app.views.MONEY: withdrawals
AGENTS_CATEGORY = "代理与佣金"  # app.views.AGENTS



class MyRealNameView(BaseView):
    """实名认证: submit name, ID number, bank card and phone; afterwards only the masked values are shown."""
    route_base = "/portal/realname"
    default_view = "index"

    @expose("/", methods=["GET"])
    @has_access
    def index(self):
        agent = require_agent()
        return self.render_template("kameng/realname.html", rec=realname.record_of(agent.id),
                                    status_text=realname.STATUS_TEXT, form={})

    @expose("/", methods=["POST"])
    @has_access
    def submit(self):
        agent = require_agent()
        form = request.form
        try:
            rec = realname.submit(agent.id, form.get("name", ""), form.get("id_number", ""),
                                  form.get("bank_card", ""), form.get("phone", ""))
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
            return self.render_template("kameng/realname.html", rec=realname.record_of(agent.id),
                                        status_text=realname.STATUS_TEXT,
                                        form={"name": form.get("name", "")}), 429 if exc.status == 429 else 400
        if rec.status == "verified":
            flash(gettext("实名认证成功"), "success")
        else:
            flash(gettext("实名认证未通过：%(failure_reason)s", failure_reason=rec.failure_reason), "danger")
        return redirect(url_for("MyRealNameView.index"))


class MyWithdrawalView(BaseView):
    """我的提现: the request form and the agent's own withdrawals (only its own, never its downline's)."""
    route_base = "/portal/withdrawals"
    default_view = "index"

    @expose("/", methods=["GET"])
    @has_access
    def index(self):
        agent = require_agent()
        return self.render_template("kameng/my_withdrawals.html", agent=agent, tier=agent.tier,
                                    balances=agent_balances(agent.id), verified=realname.is_verified(agent.id),
                                    rows=withdrawals.withdrawals_of(agent.id), status_text=withdrawals.STATUS_TEXT)

    @expose("/", methods=["POST"])
    @has_access
    def create(self):
        agent = require_agent()
        try:
            try:
                amount = parse_yuan(request.form.get("amount", ""))
            except ValueError as exc:
                raise ValidationError(str(exc)) from None
            w = withdrawals.request_withdrawal(agent.id, amount, ip=request.remote_addr,
                                               device=clean_device_id(request.form.get("device_id")))
        except KamengError as exc:
            flash(exc.message, "danger")
        else:
            flash(
                gettext(
                    "提现申请已提交：%(withdrawal_no)s，%(amount)s（手续费 %(fee)s）",
                    withdrawal_no=w.withdrawal_no,
                    amount=format_fen(w.amount),
                    fee=format_fen(w.fee),
                ),
                "success",
            )
        return redirect(url_for("MyWithdrawalView.index"))


class WithdrawalQueueView(BaseView):
    """提现审核: requests under review (approve / reject with a reason) and payouts whose result is pending."""
    route_base = "/withdrawal-review"
    default_view = "index"

    @expose("/")
    @has_access
    def index(self):
        sm = self.appbuilder.sm
        rows = withdrawals.review_queue()
        return self.render_template("kameng/withdrawal_queue.html", rows=rows,
                                    risk_reasons=withdrawals.risk_reasons(rows), status_text=withdrawals.STATUS_TEXT,
                                    can_review=sm.has_access("can_approve", "WithdrawalQueueView"),
                                    can_retry=sm.has_access("can_retry", "WithdrawalQueueView"))

    def _act(self, func, *args):
        try:
            w = func(*args)
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
        else:
            flash(gettext("提现 %(withdrawal_no)s：%(value)s", withdrawal_no=w.withdrawal_no,
                          value=withdrawals.STATUS_TEXT.get(w.status, w.status)), "success")
        return redirect(url_for("WithdrawalQueueView.index"))

    @expose("/<int:withdrawal_id>/approve", methods=["POST"])
    @has_access
    def approve(self, withdrawal_id: int):
        return self._act(withdrawals.approve, withdrawal_id, g.user.id)

    @expose("/<int:withdrawal_id>/reject", methods=["POST"])
    @has_access
    def reject(self, withdrawal_id: int):
        return self._act(withdrawals.reject, withdrawal_id, g.user.id, request.form.get("reason"))

    @expose("/<int:withdrawal_id>/retry", methods=["POST"])
    @has_access
    def retry(self, withdrawal_id: int):
        return self._act(withdrawals.retry, withdrawal_id, g.user.id)


WITHDRAWAL_LABELS = {"withdrawal_no": _("提现单号"), "agent": _("代理"), "amount_display": _("金额"),
                     "fee": _("手续费"), "net_amount": _("到账金额"), "bank_card_masked": _("银行卡"),
                     "status": _("状态"), "review_reason": _("驳回原因"), "reviewed_by": _("审核人"),
                     "reviewed_at": _("审核时间"), "payout_ref": _("打款流水"), "failure_reason": _("失败/异常原因"),
                     "created_at": _("申请时间"), "paid_at": _("打款时间")}


class WithdrawalView(ReadableColumnsMixin, ModelView):
    """Every withdrawal and its status (read only)."""
    datamodel = SQLAInterface(Withdrawal)
    route_base = "/withdrawal-records"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("提现记录")
    list_columns = ["withdrawal_no", "agent", "amount_display", "fee", "net_amount", "bank_card_masked", "status",
                    "created_at", "paid_at"]
    show_columns = list_columns + ["review_reason", "reviewed_by", "reviewed_at", "payout_ref", "failure_reason"]
    search_columns = ["withdrawal_no", "agent", "status", "created_at"]
    label_columns = WITHDRAWAL_LABELS
    formatters_columns = {"status": lambda s: withdrawals.STATUS_TEXT.get(s, s), "fee": format_fen,
                          "net_amount": format_fen}
    base_order = ("id", "desc")


GENDER_TEXT = {"M": _("男"), "F": _("女")}


class RealNameAdminView(ReadableColumnsMixin, ModelView):
    """实名认证记录: masked values and derived facts only; the encrypted columns are never listed."""
    datamodel = SQLAInterface(RealNameVerification)
    route_base = "/realname-records"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("实名认证记录")
    list_columns = ["agent", "name_masked", "id_number_masked", "bank_card_masked", "phone_masked", "status",
                    "province", "gender", "age_band", "verified_at"]
    show_columns = list_columns + ["birth_year", "provider_ref", "failure_reason", "created_at", "updated_at"]
    search_columns = ["agent", "status", "province", "gender", "age_band"]
    label_columns = {"agent": _("代理"), "name_masked": _("姓名"), "id_number_masked": _("身份证号"),
                     "bank_card_masked": _("银行卡"), "phone_masked": _("手机号"), "status": _("状态"),
                     "province": _("省份"), "gender": _("性别"), "age_band": _("年龄段"), "verified_at": _("认证时间"),
                     "birth_year": _("出生年份"), "provider_ref": _("核验流水"), "failure_reason": _("失败原因"),
                     "created_at": _("提交时间"), "updated_at": _("更新时间")}
    formatters_columns = {"status": lambda s: realname.STATUS_TEXT.get(s, s), "gender": text_of(GENDER_TEXT)}
    base_order = ("id", "desc")


def register(appbuilder, portal_category: str) -> None:
    appbuilder.add_view(MyRealNameView, "实名认证", href="/portal/realname/", icon="fa-id-card",
                        category=portal_category)
    appbuilder.add_view(MyWithdrawalView, "我的提现", href="/portal/withdrawals/", icon="fa-credit-card",
                        category=portal_category)
    appbuilder.add_view(WithdrawalQueueView, "提现审核", href="/withdrawal-review/", icon="fa-check-square-o",
                        category=REVIEW_CATEGORY)
    appbuilder.add_view(WithdrawalView, "提现记录", icon="fa-history", category=REVIEW_CATEGORY)
    appbuilder.add_view(RealNameAdminView, "实名认证记录", icon="fa-id-card-o", category=REVIEW_CATEGORY)
    from app.network.team_bonus_views import register as register_team_bonus
    register_team_bonus(appbuilder, AGENTS_CATEGORY)


__all__ = ["register"]

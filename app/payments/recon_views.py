"""Admin screens for reconciliation (对账: upload a statement, imports with counts, differences) and top-ups
(充值记录), and the sandbox cashier for top-ups. Handlers parse, call a service, render."""
from __future__ import annotations

import secrets
import time

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import select

from app.errors import KamengError
from app.extensions import db
from app.money import format_fen
from app.payments import reconciliation, topups
from app.payments.models import CHANNEL_NAMES, ReconciliationDifference, StatementImport, WalletTopUp
from app.views_common import CHANNEL_TEXT, ReadableColumnsMixin, text_of

CHANNEL_CHOICES = [
    ("sandbox", _("沙箱支付 (CSV: trade_no,order_no,amount[,kind])")),
    ("alipay", _("支付宝 (业务明细 CSV, GBK)")),
    ("wechatpay", _("微信支付 (交易账单 CSV)")),
    ("unionpay", _("银联 (INN…ZM 对账文件)")),
    ("epay", _("易支付 (订单导出 CSV: trade_no,out_trade_no,money)")),
]


class ReconciliationView(BaseView):
    route_base = "/reconciliation"
    default_view = "index"

    @expose("/", methods=["GET"])
    @has_access
    def index(self):
        imports = list(db.session.scalars(select(StatementImport).order_by(StatementImport.id.desc()).limit(100)))
        return self.render_template("kameng/reconciliation.html", imports=imports, channels=CHANNEL_CHOICES,
                                    names=CHANNEL_NAMES)

    @expose("/upload", methods=["POST"])
    @has_access
    def upload(self):
        upload = request.files.get("statement")
        try:
            day = reconciliation.parse_day(request.form.get("day"))
            content = upload.read(reconciliation.MAX_STATEMENT_BYTES + 1) if upload else b""
            row = reconciliation.import_statement(request.form.get("channel", ""), content,
                                                  filename=upload.filename if upload else None, day=day,
                                                  actor_id=g.user.id)
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
            return redirect(url_for("ReconciliationView.index"))
        flash(gettext("已导入 %(lines)s 行：匹配 %(matched)s，差异 %(differences)s",
                      lines=row.lines, matched=row.matched,
                      differences=row.differences),
              "success" if row.differences == 0 else "warning")
        return redirect(url_for("ReconciliationView.show", import_id=row.id))

    @expose("/<int:import_id>")
    @has_access
    def show(self, import_id: int):
        row = db.session.get(StatementImport, import_id) if import_id < 2 ** 31 else None
        if row is None:
            abort(404)
        diffs = list(db.session.scalars(select(ReconciliationDifference)
                                        .where(ReconciliationDifference.import_id == row.id)
                                        .order_by(ReconciliationDifference.kind, ReconciliationDifference.id)))
        return self.render_template("kameng/reconciliation_show.html", row=row, diffs=diffs,
                                    kinds=reconciliation.KIND_NAMES, names=CHANNEL_NAMES)


class WalletTopUpView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(WalletTopUp)
    route_base = "/topups"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("充值记录")
    list_columns = ["created_at", "topup_no", "agent", "amount", "channel", "status", "paid_at"]
    show_columns = list_columns
    search_columns = ["topup_no", "agent", "channel", "status", "created_at"]
    label_columns = {"created_at": _("时间"), "topup_no": _("充值单号"), "agent": _("代理"), "amount": _("金额"),
                     "channel": _("渠道"), "status": _("状态"), "paid_at": _("到账时间")}
    formatters_columns = {"amount": format_fen, "status": lambda s: topups.STATUS_TEXT.get(s, s),
                          "channel": text_of(CHANNEL_TEXT)}
    base_order = ("id", "desc")


# --- the sandbox cashier for top-ups (public, like the order cashier: the top-up number is unguessable) -------

cashier = Blueprint("topup_cashier", __name__)


@cashier.before_request
def _refuse_nul():
    from app.shop.api import refuse_nul

    return refuse_nul()


@cashier.route("/pay/sandbox/cashier/topup/<topup_no>", methods=["GET", "POST"])
def sandbox_topup_cashier(topup_no: str):
    from app.payments import service
    from app.payments.channels import sandbox

    if not service.channel_exists("sandbox"):  # the sandbox does not exist in production
        abort(404)
    topup = topups.get_topup(topup_no)
    if topup is None or topup.channel != "sandbox":
        abort(404)
    if request.method == "POST" and topup.status == "pending_payment":
        key = service.channel_settings("sandbox").get("key", "")
        fields = {"order_no": topup.topup_no, "trade_no": "SBX" + secrets.token_hex(10), "amount": str(topup.amount),
                  "currency": "CNY", "status": "SUCCESS" if request.form.get("result") == "pay" else "FAILED",
                  "ts": str(int(time.time())), "nonce": secrets.token_hex(8)}
        fields["sign"] = sandbox.sign(key, fields)
        service.handle_notification("sandbox", {}, fields, b"", request.remote_addr)
        return redirect("/portal/topup")
    return render_template("kameng/shop/topup_cashier.html", topup=topup, status_text=topups.STATUS_TEXT)


def register(appbuilder) -> None:
    appbuilder.add_view(ReconciliationView, "对账", href="/reconciliation/", icon="fa-balance-scale",
                        category="资金")
    appbuilder.add_view(WalletTopUpView, "充值记录", icon="fa-plus-circle", category="资金")
    from flask import current_app

    current_app.register_blueprint(cashier)

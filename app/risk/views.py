"""Risk control screens (风控): the lists (黑名单 / 观察名单), the rules with their versions and what each would
have hit, the decision log with its explanation, and the review queue of held orders. Handlers translate forms
into app.risk.lists / app.risk.reviews calls; personal values are shown only masked."""
from __future__ import annotations

import json
from datetime import timedelta

from flask import abort, current_app, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import select
from wtforms import SelectField
from wtforms.validators import ValidationError as FieldError

from app.auditing import AuditedViewMixin, flush_or_refuse
from app.clock import utcnow
from app.errors import KamengError, ValidationError
from app.extensions import db
from app.forms import int_range
from app.orders.models import ORDER_STATUSES, Order
from app.risk import lists, reviews, service
from app.risk.default_rules import version_of
from app.risk.labels import EVENT_TEXT, OUTCOME_TEXT, RULE_ACTION_TEXT, STAGE_TEXT
from app.risk.models import EVENTS, LIST_KINDS, RiskDecision, RiskListEntry, RiskRule, RiskRuleVersion
from app.risk.rules import compile_rule
from app.views_common import CHANNEL_TEXT, ReadableColumnsMixin, text_of

RISK = "风控"
KIND_TEXT = {"ip": _("IP"), "cidr": _("网段"), "device": _("设备"), "contact": _("联系方式"), "phone": _("手机号"),
             "id_number": _("身份证号"), "payment_account": _("支付账号"), "agent": _("代理登录名")}
LIST_ACTION_TEXT = {"block": _("黑名单"), "review": _("观察名单")}
RULE_STATUS_TEXT = {"draft": _("草稿"), "shadow": _("影子（只记录）"), "active": _("生效")}
HIT_DAYS = 7


def _days(raw) -> int | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 3650:
        raise ValidationError(gettext("有效天数须为 1-3650 的整数"))
    return int(raw)


# ------------------------------------------------------------------------------------------------ 风控名单

class RiskListView(ReadableColumnsMixin, ModelView):
    """Entries as staff read them: kind, masked value, action, reason, expiry; added, expired and removed here
    through app.risk.lists (audited). The stored value and its hash are never shown."""
    datamodel = SQLAInterface(RiskListEntry)
    route_base = "/risk-lists"
    base_permissions = ["can_list", "can_show", "can_add", "can_remove", "can_expire"]
    list_title = show_title = add_title = _("风控名单")
    list_columns = ["created_at", "kind", "masked", "action", "reason", "expires_at", "created_by", "removed_at"]
    show_columns = list_columns + ["removed_by"]
    search_columns = ["kind", "action", "masked", "reason", "created_at", "expires_at", "removed_at"]
    label_columns = {"created_at": _("添加时间"), "kind": _("类型"), "masked": _("值（脱敏）"), "action": _("名单"),
                     "reason": _("原因"), "expires_at": _("失效时间（UTC）"), "created_by": _("添加人"),
                     "removed_at": _("移除时间"), "removed_by": _("移除人")}
    formatters_columns = {"kind": text_of(KIND_TEXT), "action": text_of(LIST_ACTION_TEXT)}
    show_template = "kameng/risk/list_show.html"
    base_order = ("id", "desc")

    @expose("/add", methods=["GET", "POST"])
    @has_access
    def add(self):
        error, status = None, 200
        if request.method == "POST":
            form = request.form
            try:
                entry = lists.add(form.get("kind", ""), form.get("value", ""), form.get("action", ""),
                                  form.get("reason"), _days(form.get("days")), g.user.id)
            except KamengError as exc:
                db.session.rollback()
                error, status = exc.message, 400
            else:
                flash(gettext("已加入名单：%(value)s", value=entry.masked), "success")
                return redirect(url_for("RiskListView.show", pk=entry.id))
        # the value typed is not echoed back: it may be a phone or an ID number
        return self.render_template("kameng/risk/list_add.html", title=self.add_title, error=error,
                                    form=request.form, kinds=[(k, KIND_TEXT[k]) for k in LIST_KINDS],
                                    actions=LIST_ACTION_TEXT), status

    @expose("/remove/<int:entry_id>", methods=["POST"])
    @has_access
    def remove(self, entry_id: int):
        try:
            entry = lists.remove(entry_id, g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
        else:
            flash(gettext("已移除：%(value)s", value=entry.masked), "success")
        return redirect(url_for("RiskListView.show", pk=entry_id))

    @expose("/expire/<int:entry_id>", methods=["POST"])
    @has_access
    def expire(self, entry_id: int):
        try:
            days = _days(request.form.get("days"))
            if days is None:
                raise ValidationError(gettext("有效天数须为 1-3650 的整数"))
            entry = lists.expire(entry_id, days, g.user.id)
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
        else:
            flash(gettext("已设置失效时间：%(value)s", value=entry.masked), "success")
        return redirect(url_for("RiskListView.show", pk=entry_id))


# ------------------------------------------------------------------------------------------------ 风控规则

class RuleExpression:
    """A rule-engine expression over the features (app.risk.features); its error, as rule-engine words it."""

    def __call__(self, form, field) -> None:
        import rule_engine

        text = (field.data or "").strip()
        if not text:
            raise FieldError(gettext("请填写表达式"))
        try:
            compile_rule(text)
        except rule_engine.EngineError as exc:
            hint = getattr(exc, "suggestion", None)
            message = exc.message + (f" (did you mean {hint}?)" if hint else "")
            # FAB renders field errors through %-formatting gettext: a bare '%' would answer 500
            raise FieldError(gettext("表达式有误：%(error)s", error=message).replace("%", "％")) from None
        field.data = text


class EventList:
    """Comma-separated event kinds, or * for every event."""

    def __call__(self, form, field) -> None:
        names = [e.strip() for e in (field.data or "").split(",") if e.strip()]
        if names == ["*"] or not names:
            field.data = "*"
            return
        unknown = [e for e in names if e not in EVENTS]
        if unknown:
            raise FieldError(gettext("未知事件：%(names)s（可选：%(known)s 或 *）", names=", ".join(unknown),
                                     known=", ".join(EVENTS)).replace("%", "％"))
        field.data = ",".join(dict.fromkeys(names))


def _rule_fields() -> dict:
    return {"action": SelectField(_("动作"), choices=list(RULE_ACTION_TEXT.items())),
            "status": SelectField(_("状态"), choices=list(RULE_STATUS_TEXT.items()), default="draft")}


def rule_hit_counts(days: int = HIT_DAYS) -> dict[int, dict[str, int]]:
    """Per rule: how many decisions of the last `days` days it hit, and how many of those hits were as a shadow
    rule (what it would have done had it been on)."""
    counts: dict[int, dict[str, int]] = {}
    since = utcnow() - timedelta(days=days)
    rows = db.session.execute(select(RiskDecision.hits).where(RiskDecision.created_at >= since,
                                                             RiskDecision.hits.like('%"kind": "rule"%'))
                              .execution_options(yield_per=2000))
    for (hits,) in rows:
        for hit in json.loads(hits):
            if hit.get("kind") == "rule" and hit.get("rule_id") is not None:
                entry = counts.setdefault(int(hit["rule_id"]), {"hits": 0, "shadow": 0})
                entry["hits"] += 1
                entry["shadow"] += 1 if hit.get("shadow") else 0
    return counts


class RiskRuleView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    """Rules an admin edits; every save is a new version (kept in risk_rule_version for replay), audited, and the
    running processes re-read the rules. A rule is never deleted: set it to draft."""
    datamodel = SQLAInterface(RiskRule)
    route_base = "/risk-rules"
    base_permissions = ["can_list", "can_show", "can_add", "can_edit"]
    audit_target = "risk_rule"
    audit_columns = ["name", "events", "expression", "action", "score", "reason", "status", "version"]
    list_title = show_title = add_title = edit_title = _("风控规则")
    list_columns = ["name", "status", "events", "action", "score", "reason", "version", "updated_at"]
    show_columns = ["name", "status", "events", "expression", "action", "score", "reason", "version", "updated_by",
                    "updated_at"]
    add_columns = edit_columns = ["name", "events", "expression", "action", "score", "reason", "status"]
    search_columns = ["name", "status", "action", "events", "reason"]
    label_columns = {"name": _("规则名"), "status": _("状态"), "events": _("适用事件"), "expression": _("表达式"),
                     "action": _("动作"), "score": _("分值"), "reason": _("原因（命中时记录）"), "version": _("版本"),
                     "updated_by": _("修改人"), "updated_at": _("修改时间")}
    description_columns = {
        "events": _("逗号分隔，如 shop_checkout,checkout；* 为全部事件"),
        "expression": _("基于风控特征的表达式，如 orders_device_10m >= 5 and amount >= 10000"),
        "score": _("动作为“加分”时累计；达到审核分或拦截分即审核或拦截"),
        "status": _("影子规则只记录命中，不影响结果"),
    }
    validators_columns = {"expression": [RuleExpression()], "events": [EventList()], "score": [int_range(-1000, 1000)]}
    add_form_extra_fields = _rule_fields()
    edit_form_extra_fields = _rule_fields()
    formatters_columns = {"action": text_of(RULE_ACTION_TEXT), "status": text_of(RULE_STATUS_TEXT)}
    list_template = "kameng/risk/rule_list.html"
    base_order = ("id", "asc")

    @expose("/list/")
    @has_access
    def list(self):
        self.update_redirect()
        widgets = self._list()
        counts = rule_hit_counts()
        rules = db.session.execute(select(RiskRule.id, RiskRule.name, RiskRule.status).order_by(RiskRule.id)).all()
        hits = [{"name": name, "status": status, **counts.get(rule_id, {"hits": 0, "shadow": 0})}
                for rule_id, name, status in rules]
        return self.render_template(self.list_template, title=self.list_title, widgets=widgets, hits=hits,
                                    hit_days=HIT_DAYS, status_text=RULE_STATUS_TEXT)

    def _stamp(self, item) -> None:
        item.updated_by_id, item.updated_at = g.user.id, utcnow()
        if item.score is None:
            item.score = 0

    def pre_add(self, item):
        self._stamp(item)
        item.version = 1
        super().pre_add(item)  # flushed (an id) and audited
        db.session.add(version_of(item))
        flush_or_refuse()

    def pre_update(self, item):
        self._stamp(item)
        item.version = (item.version or 0) + 1
        super().pre_update(item)
        db.session.add(version_of(item))
        flush_or_refuse()


# ------------------------------------------------------------------------------------------------ 风控日志

def _reasons(hits_json: str) -> str:
    parts = []
    for hit in json.loads(hits_json or "[]"):
        text = hit.get("reason") or hit.get("name") or ""
        parts.append(f"{text} [{gettext('影子')}]" if hit.get("shadow") else text)
    return "；".join(parts) or "-"


def _subject(subject_json: str) -> str:
    subject = json.loads(subject_json or "{}")
    return ", ".join(f"{k}: {v}" for k, v in subject.items()) or "-"


class RiskDecisionView(ReadableColumnsMixin, ModelView):
    """Every decision, read only (append-only), with its explanation: what fired and why, the features it saw, the
    rule versions it ran, and what a replay gives today."""
    datamodel = SQLAInterface(RiskDecision)
    route_base = "/risk-decisions"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("风控日志")
    list_columns = ["created_at", "event", "outcome", "stage", "score", "hits", "subject", "order_no", "latency_us"]
    show_columns = list_columns
    search_columns = ["outcome", "event", "order_no", "stage", "created_at"]
    label_columns = {"created_at": _("时间"), "event": _("事件"), "outcome": _("结果"), "stage": _("决定环节"),
                     "score": _("分数"), "hits": _("原因"), "subject": _("主体（脱敏）"), "order_no": _("订单号"),
                     "latency_us": _("耗时 (ms)")}
    formatters_columns = {"event": text_of(EVENT_TEXT), "outcome": text_of(OUTCOME_TEXT),
                          "stage": text_of(STAGE_TEXT), "hits": _reasons, "subject": _subject,
                          "latency_us": lambda us: f"{(us or 0) / 1000:.2f}"}
    base_order = ("id", "desc")

    @expose("/show/<pk>")
    @has_access
    def show(self, pk):
        decision = self.datamodel.get(pk)
        if decision is None:
            abort(404)
        versions = []
        for rule_id, version in json.loads(decision.rule_versions or "{}").items():
            row = db.session.scalar(select(RiskRuleVersion).where(RiskRuleVersion.rule_id == int(rule_id),
                                                                  RiskRuleVersion.version == version))
            versions.append({"rule_id": rule_id, "version": version, "row": row})
        try:
            replayed = service.replay(decision.id)
        except (KamengError, KeyError, ValueError):
            replayed = None
        return self.render_template("kameng/risk/decision_show.html", title=self.show_title, d=decision,
                                    hits=json.loads(decision.hits or "[]"),
                                    features=sorted(json.loads(decision.features or "{}").items()),
                                    subject=json.loads(decision.subject or "{}"), versions=versions,
                                    replayed=replayed, outcome_text=OUTCOME_TEXT, event_text=EVENT_TEXT,
                                    stage_text=STAGE_TEXT, action_text={**RULE_ACTION_TEXT, **LIST_ACTION_TEXT})


# ------------------------------------------------------------------------------------------------ 风控审核

def _held(order: Order, now) -> dict:
    decisions = reviews.decisions_of(order)
    age = reviews.age_minutes(order, now)
    return {"order": order, "age": age, "overdue": age > reviews.sla_minutes(), "decisions": decisions,
            "reasons": reviews.reasons_of(order, decisions), "model": reviews.model_reasons_of(order, decisions),
            "identifiers": reviews.buyer_identifiers(order, decisions), "history": reviews.history(order)}


class RiskReviewView(BaseView):
    """Paid orders held by risk control, oldest first: age against the SLA, why, the buyer's history; approve
    (delivered) or reject (refunded, optionally blacklisting the buyer's device / contact / paying account)."""
    route_base = "/risk-review"
    default_view = "index"
    base_permissions = ["can_index", "can_show", "can_approve", "can_reject"]

    def _page(self, template: str, status: int = 200, **kwargs):
        sm = self.appbuilder.sm
        return self.render_template(
            template, sla=reviews.sla_minutes(), hours=current_app.config["RISK_REVIEW_HOURS"],
            can_approve=sm.has_access("can_approve", "RiskReviewView"),
            can_reject=sm.has_access("can_reject", "RiskReviewView"), channel_text=CHANNEL_TEXT,
            status_text=ORDER_STATUSES, kind_text=KIND_TEXT, outcome_text=OUTCOME_TEXT, **kwargs), status

    @expose("/")
    @has_access
    def index(self):
        now = utcnow()
        rows = [_held(order, now) for order in reviews.queue()]
        return self._page("kameng/risk/review_queue.html", rows=rows)

    @expose("/<order_no>")
    @has_access
    def show(self, order_no: str):
        return self._detail(order_no)

    def _detail(self, order_no: str, error: str | None = None, status: int = 200):
        order = db.session.scalar(select(Order).where(Order.order_no == order_no[:40]))
        if order is None:
            abort(404)
        return self._page("kameng/risk/review_show.html", status, r=_held(order, utcnow()), error=error)

    @expose("/<order_no>/approve", methods=["POST"])
    @has_access
    def approve(self, order_no: str):
        try:
            order = reviews.approve(order_no[:40], g.user.id, request.form.get("note"))
        except KamengError as exc:
            return self._detail(order_no, exc.message, exc.status if 400 <= exc.status < 500 else 400)
        flash(gettext("订单 %(no)s 已通过审核（%(status)s）", no=order.order_no, status=order.status_display()),
              "success")
        return redirect(url_for("RiskReviewView.index"))

    @expose("/<order_no>/reject", methods=["POST"])
    @has_access
    def reject(self, order_no: str):
        blacklist = [name for name in reviews.IDENTIFIER_NAMES if request.form.get(f"blacklist_{name}")]
        try:
            order = reviews.reject(order_no[:40], request.form.get("reason", ""), g.user.id, blacklist=blacklist)
        except KamengError as exc:
            return self._detail(order_no, exc.message, exc.status if 400 <= exc.status < 500 else 400)
        flash(gettext("订单 %(no)s 已拒绝并退款", no=order.order_no), "success")
        return redirect(url_for("RiskReviewView.index"))


def register(appbuilder) -> None:
    appbuilder.add_view(RiskReviewView, "风控审核", href="/risk-review/", icon="fa-gavel", category=RISK,
                        category_icon="fa-shield")
    appbuilder.add_view(RiskListView, "风控名单", icon="fa-ban", category=RISK)
    appbuilder.add_view(RiskRuleView, "风控规则", icon="fa-sliders", category=RISK)
    appbuilder.add_view(RiskDecisionView, "风控日志", icon="fa-history", category=RISK)
    from app.risk.feed_views import register as register_feed_views

    register_feed_views(appbuilder)  # 共享名单
    from app.risk.learning.views import register as register_learning

    register_learning(appbuilder)

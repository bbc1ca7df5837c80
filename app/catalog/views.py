"""Admin screens for categories, suppliers, products, prices, card stock, imports and restock alerts."""
from __future__ import annotations

import json
import re

from flask import current_app, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.actions import action
from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from markupsafe import Markup, escape
from sqlalchemy import inspect, select
from wtforms import StringField

from app import crypto
from app.audit import service as audit
from app.auditing import AuditedViewMixin
from app.catalog import cards
from app.catalog import service as catalog_service
from app.catalog.models import (
    MAX_USES_LIMIT,
    CardImport,
    CardSecret,
    Category,
    PriceRule,
    Product,
    StockAlert,
    Supplier,
    TierPrice,
)
from app.errors import KamengError
from app.extensions import db
from app.forms import PercentField, YuanField, checkbox, int_range
from app.ledger import service as ledger
from app.money import format_fen
from app.queueing import enqueue
from app.views_common import ReadableColumnsMixin, text_of


class CategoryView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(Category)
    route_base = "/categories"
    audit_target = "category"
    audit_columns = ["name", "sort_order", "active"]
    list_title = show_title = add_title = edit_title = _("商品分类")
    list_columns = add_columns = edit_columns = show_columns = ["name", "sort_order", "active"]
    label_columns = {"name": _("名称"), "sort_order": _("排序"), "active": _("启用")}
    base_order = ("sort_order", "asc")
    add_form_extra_fields = {"active": checkbox(_("启用"), default=True)}
    edit_form_extra_fields = {"active": checkbox(_("启用"), default=True)}
    validators_columns = {"sort_order": [int_range(-1_000_000, 1_000_000)]}


SUPPLIER_PROTOCOLS = [("", _("无（平台自有库存）")), ("simulator", _("simulator 模拟上游")),
                      ("kameng", _("kameng 对接其他卡盟"))]
SUPPLIER_LABELS = {
    "name": _("名称"), "is_platform_own": _("平台自营"), "service_fee_bp": _("服务费率 %"), "active": _("启用"),
    "contact": _("联系方式"), "protocol": _("对接协议"), "endpoint": _("接口地址"), "app_key": _("接口账号 (App Key)"),
    "secret": _("接口密钥"), "priority": _("优先级"), "timeout_seconds": _("超时（秒）"),
    "low_balance_threshold": _("余额提醒阈值（元）"), "balance": _("上游余额"), "balance_synced_at": _("余额同步时间"),
}


def _supplier_fields() -> dict:
    from wtforms import IntegerField, PasswordField, SelectField
    from wtforms.validators import URL, Length, Optional

    return {
        "service_fee_bp": PercentField(SUPPLIER_LABELS["service_fee_bp"]),
        "active": checkbox(SUPPLIER_LABELS["active"], default=True),
        "protocol": SelectField(SUPPLIER_LABELS["protocol"], choices=SUPPLIER_PROTOCOLS, default=""),
        "endpoint": StringField(SUPPLIER_LABELS["endpoint"], widget=BS3TextFieldWidget(),
                                validators=[Optional(), Length(max=255),
                                            URL(require_tld=False, message=_("接口地址必须是 http(s):// 开头的网址"))],
                                description=_("上游接口的根地址，例如 https://api.example.com")),
        # Write-only: never rendered back (PasswordField shows no value); blank on edit keeps the stored one.
        "secret": PasswordField(SUPPLIER_LABELS["secret"], widget=BS3PasswordFieldWidget(),
                                validators=[Optional(), Length(max=256)],
                                description=_("加密保存，保存后不再显示；编辑时留空表示不修改")),
        # Optional in the form (a supplier of our own stock needs neither); blank keeps the column default.
        "priority": IntegerField(SUPPLIER_LABELS["priority"], default=100, widget=BS3TextFieldWidget(),
                                 validators=[Optional(), int_range(0, 1_000_000)],
                                 description=_("数字越小越先尝试")),
        "timeout_seconds": IntegerField(SUPPLIER_LABELS["timeout_seconds"], default=10, widget=BS3TextFieldWidget(),
                                        validators=[Optional(), int_range(1, 120)], description=_("1 到 120 秒")),
        "low_balance_threshold": YuanField(SUPPLIER_LABELS["low_balance_threshold"], default=0,
                                           description=_("上游余额低于该金额时提醒管理员；0 表示不提醒")),
    }


def _secret_marker(secret_enc: str | None) -> str | None:
    """What the audit log records about the secret: whether it changed, never the secret (nor its ciphertext)."""
    import hashlib

    return None if not secret_enc else "sha256:" + hashlib.sha256(secret_enc.encode()).hexdigest()[:12]


class SupplierView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(Supplier)
    route_base = "/suppliers"
    audit_target = "supplier"
    audit_columns = ["name", "service_fee_bp", "active", "contact", "protocol", "endpoint", "app_key", "priority",
                     "timeout_seconds", "low_balance_threshold"]
    list_title = show_title = add_title = edit_title = _("上游供应商")
    list_columns = ["name", "is_platform_own", "protocol", "priority", "balance", "balance_synced_at",
                    "service_fee_bp", "active"]
    add_columns = edit_columns = ["name", "service_fee_bp", "active", "contact", "protocol", "endpoint", "app_key",
                                  "secret", "priority", "timeout_seconds", "low_balance_threshold"]
    # secret_enc is never listed, shown, searched or ordered by, for anyone
    show_columns = ["name", "is_platform_own", "service_fee_bp", "active", "contact", "protocol", "endpoint",
                    "app_key", "priority", "timeout_seconds", "balance", "balance_synced_at",
                    "low_balance_threshold"]
    search_columns = ["name", "protocol", "active"]
    order_columns = ["name", "priority", "balance", "balance_synced_at", "active"]
    label_columns = SUPPLIER_LABELS
    formatters_columns = {"balance": lambda v: format_fen(v) if v is not None else "-",
                          "low_balance_threshold": format_fen,
                          "protocol": lambda v: dict(SUPPLIER_PROTOCOLS).get(v or "", v)}
    add_form_extra_fields = _supplier_fields()
    edit_form_extra_fields = _supplier_fields()

    def _audit_snapshot(self, item) -> dict:
        snapshot = super()._audit_snapshot(item)
        snapshot["secret"] = _secret_marker(item.secret_enc)
        return snapshot

    def _changes(self, item) -> tuple[dict, dict]:
        old, new = super()._changes(item)
        before = g.get("kameng_audit_before")
        if before is not None and before[2].get("secret") != _secret_marker(item.secret_enc):
            old["secret"], new["secret"] = before[2].get("secret"), _secret_marker(item.secret_enc)
        return old, new

    def _apply_form(self, item) -> None:
        item.protocol = item.protocol or None
        item.endpoint = (item.endpoint or "").strip() or None
        item.app_key = (item.app_key or "").strip() or None
        secret = getattr(item, "secret", None)
        if secret:
            item.secret_enc = crypto.encrypt(secret)
        item.secret = None  # the plain secret leaves the object (and the request) here
        if item.service_fee_bp is None:
            item.service_fee_bp = 0
        if item.low_balance_threshold is None:
            item.low_balance_threshold = 0
        if item.priority is None:
            item.priority = 100
        if item.timeout_seconds is None:
            item.timeout_seconds = 10
        if item.protocol and not (item.endpoint and item.app_key and item.secret_enc):
            raise ValueError(gettext("对接上游需要填写接口地址、接口账号和接口密钥"))

    def pre_add(self, item):
        self._apply_form(item)
        super().pre_add(item)  # flushes: the item has an id
        ledger.open_supplier_account(item.id)

    def pre_update(self, item):
        self._apply_form(item)
        super().pre_update(item)

    @action("sync", _("同步余额和库存"), _("立即向所选供应商查询余额和库存？"), "fa-refresh", single=False)
    def sync(self, items):
        from app.suppliers import sync

        items = items if isinstance(items, list) else [items]
        ids = [item.id for item in items if item is not None and item.protocol]
        if not ids:
            flash(gettext("所选供应商都没有配置对接协议"), "warning")
            return redirect(url_for("SupplierView.list"))
        report = sync.sync_all(ids)
        audit.record("supplier.sync", "supplier", ",".join(map(str, ids)), None,
                     {"synced": report["synced"], "failed": report["failed"]})
        db.session.commit()
        for entry in report["suppliers"]:
            if entry["errors"]:
                flash(gettext("%(name)s 同步失败：%(error)s", name=entry["name"], error="; ".join(entry["errors"])),
                      "danger")
            else:
                flash(gettext("%(name)s 已同步：余额 %(balance)s，%(count)s 个货源映射",
                              name=entry["name"], count=entry["mappings"],
                              balance=format_fen(entry["balance"]) if entry["balance"] is not None else "-"),
                      "success")
        return redirect(url_for("SupplierView.list"))


PRODUCT_LABELS = {
    "name": _("商品名称"), "category": _("分类"), "supplier": _("供应商"), "kind": _("类型"),
    "kind_display": _("类型"), "face_price": _("面值（元）"), "face_display": _("面值"), "cost": _("成本（元）"),
    "cost_display": _("成本"), "max_per_order": _("单笔最多"), "low_stock_threshold": _("补货提醒阈值"),
    "active": _("上架"), "description": _("说明"), "created_at": _("创建时间"), "stock_display": _("库存"),
    "reusable": _("循环卡密"), "max_uses": _("每个卡密可售次数"),
}
PRODUCT_COLUMNS = ["name", "category", "supplier", "kind", "face_price", "cost", "max_per_order",
                   "low_stock_threshold", "reusable", "max_uses", "active", "description"]


def _product_fields() -> dict:
    from wtforms import IntegerField, SelectField
    from wtforms.validators import InputRequired, Optional
    return {
        # InputRequired, not DataRequired: a cost of "0" is an answer, an empty box is not
        "face_price": YuanField(PRODUCT_LABELS["face_price"], min_fen=1, validators=[InputRequired()]),
        "cost": YuanField(PRODUCT_LABELS["cost"], validators=[InputRequired()],
                          description=_("每件应付供应商的成本，平台自营可填 0")),
        "kind": SelectField(PRODUCT_LABELS["kind"], choices=[("card", _("卡密")), ("direct", _("直充")),
                                                              ("manual", _("人工"))]),
        "active": checkbox(PRODUCT_LABELS["active"], default=True),
        "reusable": checkbox(PRODUCT_LABELS["reusable"], default=False),
        "max_uses": IntegerField(PRODUCT_LABELS["max_uses"], widget=BS3TextFieldWidget(),
                                 validators=[Optional(), int_range(1, MAX_USES_LIMIT)],
                                 description=_("循环卡密（共享账号、教程、下载码）：每个卡密最多卖给多少个订单；"
                                               "有库存后不能再切换循环模式，可调整次数")),
    }


def _stock_text(product: Product, level) -> str:
    if product.kind == "card":
        return str(level.available) if level.in_stock else gettext("缺货")
    if product.kind == "direct":
        return gettext("有货源") if level.in_stock else gettext("无可用货源")
    return "-"


class _ProductInterface(SQLAInterface):
    """Products with the computed 库存 column (`stock_display`), read for the whole page at once through
    catalog.service.stock_levels, the one availability rule every listing uses."""

    def _with_stock(self, items, values):
        levels = catalog_service.stock_levels(items)
        for item, row in zip(items, values, strict=True):
            row["stock_display"] = _stock_text(item, levels[item.id])
            yield row

    def get_values(self, lst, list_columns):
        lst = list(lst)
        if "stock_display" not in list_columns:
            return super().get_values(lst, list_columns)
        columns = [c for c in list_columns if c != "stock_display"]
        return self._with_stock(lst, list(super().get_values(lst, columns)))

    def get_values_item(self, item, show_columns):
        if "stock_display" not in show_columns:
            return super().get_values_item(item, show_columns)
        values = super().get_values_item(item, [c for c in show_columns if c != "stock_display"])
        values.insert(show_columns.index("stock_display"),
                      _stock_text(item, catalog_service.stock_levels([item])[item.id]))
        return values


class ProductView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = _ProductInterface(Product)
    route_base = "/products"
    audit_target = "product"
    audit_columns = ["name", "kind", "face_price", "cost", "max_per_order", "low_stock_threshold", "active",
                     "category_id", "supplier_id", "reusable", "max_uses"]
    list_title = show_title = add_title = edit_title = _("商品")
    list_columns = ["name", "category", "kind_display", "face_display", "cost_display", "supplier", "stock_display",
                    "active"]
    show_columns = ["name", "category", "supplier", "kind_display", "face_display", "cost_display",
                    "max_per_order", "low_stock_threshold", "reusable", "max_uses", "stock_display", "active",
                    "description", "created_at"]
    order_columns = ["name", "active"]  # stock_display is computed, not a column to sort by
    add_columns = edit_columns = PRODUCT_COLUMNS
    search_columns = ["name", "category", "supplier", "kind", "active"]
    label_columns = PRODUCT_LABELS
    add_form_extra_fields = _product_fields()
    edit_form_extra_fields = _product_fields()
    validators_columns = {"max_per_order": [int_range(1, 1000)], "low_stock_threshold": [int_range(0, 1_000_000)]}

    def pre_add(self, item):
        _check_product(item)
        super().pre_add(item)

    def pre_update(self, item):
        _check_product(item)
        super().pre_update(item)
        if item.reusable and inspect(item).attrs.max_uses.history.has_changes():
            # The new limit per secret applies to the stock too, in the same transaction as the product's edit.
            catalog_service.apply_max_uses(item.id, item.max_uses)


def _check_product(item: Product) -> None:
    if item.face_price is None:
        raise ValueError(gettext("请填写面值"))
    if item.cost is None:
        raise ValueError(gettext("请填写成本（平台自营可填 0）"))
    if item.max_per_order is None or not 1 <= item.max_per_order <= 1000:
        raise ValueError(gettext("单笔最多购买数量必须在 1 到 1000 之间"))
    if item.low_stock_threshold is None or item.low_stock_threshold < 0:
        raise ValueError(gettext("补货提醒阈值不能为负"))
    if item.category is None or item.supplier is None:
        raise ValueError(gettext("请选择分类和供应商"))
    catalog_service.check_reuse_change(item)


class TierPriceView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(TierPrice)
    route_base = "/tier-prices"
    audit_target = "tier_price"
    audit_columns = ["product_id", "tier_id", "price"]
    list_title = show_title = add_title = edit_title = _("等级价格")
    list_columns = ["product", "tier", "price_display"]
    add_columns = edit_columns = show_columns = ["product", "tier", "price"]
    label_columns = {"product": _("商品"), "tier": _("等级"), "price": _("价格（元）"), "price_display": _("价格")}
    add_form_extra_fields = {"price": YuanField(_("价格（元）"), min_fen=1)}
    edit_form_extra_fields = {"price": YuanField(_("价格（元）"), min_fen=1)}

    def pre_add(self, item):
        _check_tier_price(item)
        super().pre_add(item)

    def pre_update(self, item):
        _check_tier_price(item)
        super().pre_update(item)


def _check_tier_price(item: TierPrice) -> None:
    if item.product is None or item.tier is None or item.price is None:
        raise ValueError(gettext("请选择商品、等级并填写价格"))
    with db.session.no_autoflush:  # an autoflush would hit the unique constraint before this check could answer
        clash = db.session.scalar(select(TierPrice.id).where(TierPrice.product_id == item.product.id,
                                                             TierPrice.tier_id == item.tier.id,
                                                             TierPrice.id != (item.id or 0)))
    if clash:
        raise ValueError(gettext("该商品已有这个等级的价格，请直接编辑"))


class PriceRuleView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(PriceRule)
    route_base = "/price-rules"
    audit_target = "price_rule"
    audit_columns = ["name", "product_id", "tier_id", "rate_bp", "starts_at", "ends_at", "active"]
    list_title = show_title = add_title = edit_title = _("限时价格规则")
    list_columns = ["name", "product", "tier", "rate_bp", "starts_at", "ends_at", "active"]
    add_columns = edit_columns = show_columns = ["name", "product", "tier", "rate_bp", "starts_at", "ends_at",
                                                 "active"]
    label_columns = {"name": _("名称"), "product": _("商品"), "tier": _("等级（空为全部）"),
                     "rate_bp": _("折上折 %"), "starts_at": _("开始（UTC）"), "ends_at": _("结束（UTC）"),
                     "active": _("启用")}
    description_columns = {"rate_bp": _("在等级价基础上再乘以该比例，例如 90 表示再打九折")}
    add_form_extra_fields = {"rate_bp": PercentField(_("折上折 %"), min_bp=1),
                             "active": checkbox(_("启用"), default=True)}
    edit_form_extra_fields = {"rate_bp": PercentField(_("折上折 %"), min_bp=1),
                              "active": checkbox(_("启用"), default=True)}

    def pre_add(self, item):
        _check_rule(item)
        super().pre_add(item)

    def pre_update(self, item):
        _check_rule(item)
        super().pre_update(item)


def _check_rule(item: PriceRule) -> None:
    if item.product is None or item.rate_bp is None or item.starts_at is None or item.ends_at is None:
        raise ValueError(gettext("请填写商品、比例、开始和结束时间"))
    if item.ends_at <= item.starts_at:
        raise ValueError(gettext("结束时间必须晚于开始时间"))


CARD_STATUS_TEXT = {"available": _("可售"), "sold": _("已售"), "void": _("作废")}
IMPORT_STATUS_TEXT = {"queued": _("排队中"), "running": _("导入中"), "done": _("已完成"), "failed": _("失败")}
IMPORT_SOURCE_TEXT = {"paste": _("粘贴"), "file": _("文件"), "cli": _("命令行")}


class CardSecretView(ReadableColumnsMixin, ModelView):
    """Staff see masked secrets only; the full secret is shown to nobody but the order's owner."""
    datamodel = SQLAInterface(CardSecret)
    route_base = "/card-secrets"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("卡密库存")
    list_columns = ["product", "masked", "status", "uses_display", "order", "batch", "created_at", "sold_at"]
    show_columns = list_columns
    search_columns = ["product", "status", "created_at", "sold_at"]
    label_columns = {"product": _("商品"), "masked": _("卡密（脱敏）"), "status": _("状态"), "order": _("订单"),
                     "batch": _("导入批次"), "created_at": _("入库时间"), "sold_at": _("售出时间"),
                     "uses_display": _("已售次数（循环卡密）")}
    formatters_columns = {"status": text_of(CARD_STATUS_TEXT)}
    base_order = ("id", "desc")


def _report_html(report: str | None) -> Markup:
    if not report:
        return Markup("")
    details = json.loads(report)
    lines = [gettext("第 %(line)s 行：%(reason)s", line=n, reason=reason)
             for n, reason in details.get("duplicate_lines", [])[:50]]
    lines += [gettext("第 %(line)s 行（拒绝）：%(reason)s", line=n, reason=reason)
              for n, reason in details.get("rejected_lines", [])[:50]]
    return Markup("<br>").join(escape(line) for line in lines)


class CardImportView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(CardImport)
    route_base = "/card-imports"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("卡密导入批次")
    list_columns = ["id", "product", "source", "status", "progress_display", "added", "duplicates", "rejected",
                    "created_by", "created_at"]
    show_columns = ["id", "product", "source", "filename", "status", "progress_display", "total_lines", "added",
                    "duplicates", "rejected", "report", "error", "job_id", "created_by", "created_at",
                    "finished_at"]
    label_columns = {"id": _("批次号"), "product": _("商品"), "source": _("来源"), "filename": _("文件名"),
                     "status": _("状态"), "progress_display": _("进度"), "total_lines": _("总行数"),
                     "added": _("新增"), "duplicates": _("重复"), "rejected": _("拒绝"), "report": _("明细"),
                     "error": _("错误"), "job_id": _("任务"), "created_by": _("操作人"),
                     "created_at": _("时间"), "finished_at": _("完成时间")}
    formatters_columns = {"report": _report_html, "status": text_of(IMPORT_STATUS_TEXT),
                          "source": text_of(IMPORT_SOURCE_TEXT)}
    base_order = ("id", "desc")


def _small_int(value) -> int | None:
    """An id from a form or query string: ASCII digits within INTEGER's range, else unknown ('²'.isdigit() is True,
    but int('²') raises; an id past INTEGER makes the database raise)."""
    value = (value or "").strip()
    return int(value) if re.fullmatch(r"[0-9]{1,9}", value) else None


class CardImportFormView(BaseView):
    """Paste or upload card secrets: preview with a dedupe report, then import (a job above the threshold)."""
    route_base = "/card-import"
    default_view = "form"

    def _products(self):
        return db.session.scalars(select(Product).where(Product.kind == "card").order_by(Product.id)).all()

    def _read_input(self) -> tuple[int | None, str, str | None, str]:
        product_id = _small_int(request.form.get("product_id"))
        upload = request.files.get("file")
        if upload is not None and upload.filename:
            return product_id, cards.decode_upload(upload.read()), upload.filename[:255], "file"
        return product_id, request.form.get("text", ""), None, "paste"

    def _render(self, **context):
        return self.render_template("kameng/card_import.html", products=self._products(), **context)

    @expose("/", methods=["GET"])
    @has_access
    def form(self):
        return self._render(report=None, text="", product_id=_small_int(request.args.get("product_id")))

    @expose("/", methods=["POST"])
    @has_access
    def submit(self):
        try:
            product_id, text, filename, source = self._read_input()
            if product_id is None:
                raise KamengError(_("请选择商品"))
            if not text.strip():
                raise KamengError(_("没有可导入的卡密：请粘贴卡密或上传文件"))
            if request.form.get("confirm") != "1":
                report = cards.preview(product_id, text, filename)
                return self._render(report=report, text=text, product_id=product_id, filename=filename)
            batch = cards.create_import(product_id, text, filename, source, user_id=g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
            return self._render(report=None, text=request.form.get("text", ""),
                                product_id=_small_int(request.form.get("product_id")))
        if batch.total_lines > current_app.config["CARD_IMPORT_JOB_THRESHOLD"]:
            batch.job_id = f"card-import-{batch.id}"
            db.session.commit()
            enqueue("import_cards", batch.id, job_id=batch.job_id, queue="low")
            flash(gettext("已提交后台导入任务（%(count)s 行），可在批次页查看进度", count=batch.total_lines), "info")
        else:
            report = cards.run_import(batch.id)
            flash(gettext("导入完成：新增 %(added)s，重复 %(duplicates)s，拒绝 %(rejected)s", added=report["added"],
                          duplicates=report["duplicates"], rejected=report["rejected"]), "success")
        return redirect(url_for("CardImportView.show", pk=batch.id))


class StockAlertView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(StockAlert)
    route_base = "/stock-alerts"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("补货提醒")
    list_columns = ["product", "available", "threshold", "created_at", "resolved_at"]
    show_columns = list_columns
    search_columns = ["product", "created_at", "resolved_at"]
    label_columns = {"product": _("商品"), "available": _("剩余库存"), "threshold": _("阈值"),
                     "created_at": _("提醒时间"), "resolved_at": _("已补货时间")}
    base_order = ("id", "desc")

"""Admin screens for categories, suppliers, products, prices, card stock, imports and restock alerts."""
from __future__ import annotations

import json
import re

from flask import current_app, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import lazy_gettext as _
from markupsafe import Markup, escape
from sqlalchemy import select

from app.auditing import AuditedViewMixin
from app.catalog import cards
from app.catalog.models import (
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
from workers import jobs
from workers.queues import enqueue


class CategoryView(AuditedViewMixin, ModelView):
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


class SupplierView(AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(Supplier)
    route_base = "/suppliers"
    audit_target = "supplier"
    audit_columns = ["name", "service_fee_bp", "active", "contact"]
    list_title = show_title = add_title = edit_title = _("上游供应商")
    list_columns = ["name", "is_platform_own", "service_fee_bp", "active", "contact"]
    add_columns = edit_columns = show_columns = ["name", "service_fee_bp", "active", "contact"]
    label_columns = {"name": _("名称"), "is_platform_own": _("平台自营"), "service_fee_bp": _("服务费率 %"),
                     "active": _("启用"), "contact": _("联系方式")}
    add_form_extra_fields = {"service_fee_bp": PercentField(_("服务费率 %")),
                             "active": checkbox(_("启用"), default=True)}
    edit_form_extra_fields = {"service_fee_bp": PercentField(_("服务费率 %")),
                              "active": checkbox(_("启用"), default=True)}

    def pre_add(self, item):
        if item.service_fee_bp is None:
            item.service_fee_bp = 0
        super().pre_add(item)  # flushes: the item has an id
        ledger.open_supplier_account(item.id)


PRODUCT_LABELS = {
    "name": _("商品名称"), "category": _("分类"), "supplier": _("供应商"), "kind": _("类型"),
    "kind_display": _("类型"), "face_price": _("面值（元）"), "face_display": _("面值"), "cost": _("成本（元）"),
    "cost_display": _("成本"), "max_per_order": _("单笔最多"), "low_stock_threshold": _("补货提醒阈值"),
    "active": _("上架"), "description": _("说明"), "created_at": _("创建时间"),
}
PRODUCT_COLUMNS = ["name", "category", "supplier", "kind", "face_price", "cost", "max_per_order",
                   "low_stock_threshold", "active", "description"]


def _product_fields() -> dict:
    from wtforms import SelectField
    from wtforms.validators import InputRequired
    return {
        # InputRequired, not DataRequired: a cost of "0" is an answer, an empty box is not
        "face_price": YuanField(PRODUCT_LABELS["face_price"], min_fen=1, validators=[InputRequired()]),
        "cost": YuanField(PRODUCT_LABELS["cost"], validators=[InputRequired()],
                          description="每件应付供应商的成本，平台自营可填 0"),
        "kind": SelectField(PRODUCT_LABELS["kind"], choices=[("card", "卡密"), ("direct", "直充"),
                                                              ("manual", "人工")]),
        "active": checkbox(PRODUCT_LABELS["active"], default=True),
    }


class ProductView(AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(Product)
    route_base = "/products"
    audit_target = "product"
    audit_columns = ["name", "kind", "face_price", "cost", "max_per_order", "low_stock_threshold", "active",
                     "category_id", "supplier_id"]
    list_title = show_title = add_title = edit_title = _("商品")
    list_columns = ["name", "category", "kind_display", "face_display", "cost_display", "supplier", "active"]
    show_columns = ["name", "category", "supplier", "kind_display", "face_display", "cost_display",
                    "max_per_order", "low_stock_threshold", "active", "description", "created_at"]
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


def _check_product(item: Product) -> None:
    if item.face_price is None:
        raise ValueError("请填写面值")
    if item.cost is None:
        raise ValueError("请填写成本（平台自营可填 0）")
    if item.max_per_order is None or not 1 <= item.max_per_order <= 1000:
        raise ValueError("单笔最多购买数量必须在 1 到 1000 之间")
    if item.low_stock_threshold is None or item.low_stock_threshold < 0:
        raise ValueError("补货提醒阈值不能为负")
    if item.category is None or item.supplier is None:
        raise ValueError("请选择分类和供应商")


class TierPriceView(AuditedViewMixin, ModelView):
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
        raise ValueError("请选择商品、等级并填写价格")
    with db.session.no_autoflush:  # an autoflush would hit the unique constraint before this check could answer
        clash = db.session.scalar(select(TierPrice.id).where(TierPrice.product_id == item.product.id,
                                                             TierPrice.tier_id == item.tier.id,
                                                             TierPrice.id != (item.id or 0)))
    if clash:
        raise ValueError("该商品已有这个等级的价格，请直接编辑")


class PriceRuleView(AuditedViewMixin, ModelView):
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
        raise ValueError("请填写商品、比例、开始和结束时间")
    if item.ends_at <= item.starts_at:
        raise ValueError("结束时间必须晚于开始时间")


class CardSecretView(ModelView):
    """Staff see masked secrets only; the full secret is shown to nobody but the order's owner."""
    datamodel = SQLAInterface(CardSecret)
    route_base = "/card-secrets"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("卡密库存")
    list_columns = ["product", "masked", "status", "order", "batch", "created_at", "sold_at"]
    show_columns = list_columns
    search_columns = ["product", "status", "created_at", "sold_at"]
    label_columns = {"product": _("商品"), "masked": _("卡密（脱敏）"), "status": _("状态"), "order": _("订单"),
                     "batch": _("导入批次"), "created_at": _("入库时间"), "sold_at": _("售出时间")}
    base_order = ("id", "desc")


def _report_html(report: str | None) -> Markup:
    if not report:
        return Markup("")
    details = json.loads(report)
    lines = [f"第 {n} 行：{escape(reason)}" for n, reason in details.get("duplicate_lines", [])[:50]]
    lines += [f"第 {n} 行（拒绝）：{escape(reason)}" for n, reason in details.get("rejected_lines", [])[:50]]
    return Markup("<br>".join(lines))


class CardImportView(ModelView):
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
    formatters_columns = {"report": _report_html}
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
                raise KamengError("请选择商品 (choose a product)")
            if not text.strip():
                raise KamengError("没有可导入的卡密：请粘贴卡密或上传文件 (nothing to import)")
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
            enqueue(jobs.import_cards, batch.id, job_id=batch.job_id, queue="low")
            flash(f"已提交后台导入任务（{batch.total_lines} 行），可在批次页查看进度", "info")
        else:
            report = cards.run_import(batch.id)
            flash(f"导入完成：新增 {report['added']}，重复 {report['duplicates']}，拒绝 {report['rejected']}",
                  "success")
        return redirect(url_for("CardImportView.show", pk=batch.id))


class StockAlertView(ModelView):
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

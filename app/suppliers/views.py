"""Admin screens for direct top-ups: supplier mappings (货源映射) and supplier alerts (供应商余额提醒).

The supplier itself (connection, write-only secret, balance, the sync action) is app.catalog.views.SupplierView.
"""
from __future__ import annotations

from flask_appbuilder import ModelView
from flask_appbuilder.models.sqla.filters import FilterEqual
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import select

from app.auditing import AuditedViewMixin
from app.extensions import db
from app.forms import YuanField, checkbox, int_range
from app.money import format_fen
from app.suppliers.models import SupplierAlert, SupplierProduct
from app.views_common import ReadableColumnsMixin


def _fen_or_dash(value) -> str:
    return format_fen(value) if value is not None else "-"


def _stock_or_unlimited(value) -> str:
    return str(value) if value is not None else gettext("不限/未报告")


MAPPING_LABELS = {
    "supplier": _("供应商"), "product": _("商品"), "upstream_code": _("上游商品编码"), "cost": _("成本（元）"),
    "cost_display": _("成本"), "priority": _("优先级"), "active": _("启用"), "upstream_stock": _("上游库存"),
    "upstream_price": _("上游价格"), "synced_at": _("同步时间"),
}
_DIRECT_ONLY = {"product": [["kind", FilterEqual, "direct"]]}


def _mapping_fields() -> dict:
    from wtforms.validators import InputRequired

    return {"cost": YuanField(MAPPING_LABELS["cost"], validators=[InputRequired()],
                              description=_("在该供应商处每件的进货成本")),
            "active": checkbox(MAPPING_LABELS["active"], default=True)}


class SupplierProductView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    """货源映射: which supplier sells which direct product, under which code, at what cost."""
    datamodel = SQLAInterface(SupplierProduct)
    route_base = "/supplier-products"
    audit_target = "supplier_product"
    audit_columns = ["supplier_id", "product_id", "upstream_code", "cost", "priority", "active"]
    list_title = show_title = add_title = edit_title = _("货源映射")
    list_columns = ["product", "supplier", "upstream_code", "cost_display", "priority", "active", "upstream_stock",
                    "upstream_price", "synced_at"]
    show_columns = list_columns
    add_columns = edit_columns = ["supplier", "product", "upstream_code", "cost", "priority", "active"]
    search_columns = ["supplier", "product", "upstream_code", "active"]
    order_columns = ["upstream_code", "priority", "active", "upstream_stock", "upstream_price", "synced_at"]
    label_columns = MAPPING_LABELS
    description_columns = {"priority": _("数字越小越先尝试（再按供应商优先级）"),
                           "upstream_code": _("该商品在上游的编码；对接其他卡盟时填上游的商品 ID")}
    formatters_columns = {"upstream_price": _fen_or_dash, "upstream_stock": _stock_or_unlimited}
    add_form_query_rel_fields = edit_form_query_rel_fields = _DIRECT_ONLY
    add_form_extra_fields = _mapping_fields()
    edit_form_extra_fields = _mapping_fields()
    validators_columns = {"priority": [int_range(0, 1_000_000)]}
    base_order = ("id", "desc")

    def pre_add(self, item):
        _check_mapping(item)
        super().pre_add(item)

    def pre_update(self, item):
        _check_mapping(item)
        super().pre_update(item)


def _check_mapping(item: SupplierProduct) -> None:
    if item.supplier is None or item.product is None:
        raise ValueError(gettext("请选择供应商和商品"))
    if item.product.kind != "direct":  # the dropdown offers direct products only; a forged form is refused here
        raise ValueError(gettext("只有直充商品需要货源映射"))
    item.upstream_code = (item.upstream_code or "").strip()
    if not item.upstream_code or len(item.upstream_code) > 64:
        raise ValueError(gettext("请填写上游商品编码（最多 64 个字符）"))
    if item.cost is None or item.cost < 0:
        raise ValueError(gettext("请填写成本"))
    if item.priority is None:
        item.priority = 100
    with db.session.no_autoflush:  # answer the duplicate before the unique constraint would
        clash = db.session.scalar(select(SupplierProduct.id).where(
            SupplierProduct.supplier_id == item.supplier.id, SupplierProduct.product_id == item.product.id,
            SupplierProduct.id != (item.id or 0)))
    if clash:
        raise ValueError(gettext("该供应商已有这个商品的映射，请直接编辑"))


class SupplierAlertView(ReadableColumnsMixin, ModelView):
    """供应商余额提醒: raised by the stock sync when our balance at a supplier falls below its threshold."""
    datamodel = SQLAInterface(SupplierAlert)
    route_base = "/supplier-alerts"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("供应商余额提醒")
    list_columns = ["supplier", "kind", "value", "threshold", "created_at", "resolved_at"]
    show_columns = list_columns
    search_columns = ["supplier", "created_at", "resolved_at"]
    label_columns = {"supplier": _("供应商"), "kind": _("类型"), "value": _("当时余额"), "threshold": _("阈值"),
                     "created_at": _("提醒时间"), "resolved_at": _("恢复时间")}
    formatters_columns = {"value": format_fen, "threshold": format_fen,
                          "kind": lambda k: gettext("余额不足") if k == "low_balance" else k}
    base_order = ("id", "desc")

"""Every FAB screen registered in one place, with its menu category (zh_CN names)."""
from __future__ import annotations

from flask_appbuilder import AppBuilder

from app.agents.views import AgentView, TierView, WalletAdjustView
from app.audit.views import AuditView
from app.catalog.views import (
    CardImportFormView,
    CardImportView,
    CardSecretView,
    CategoryView,
    PriceRuleView,
    ProductView,
    StockAlertView,
    SupplierView,
    TierPriceView,
)
from app.ledger.views import AccountView, JournalView, PostingView
from app.orders.views import OrderView
from app.portal import views as portal

# Menu categories
AGENTS = "代理管理"
CATALOG = "商品管理"
STOCK = "卡密库存"
ORDERS = "订单"
LEDGER = "财务账本"
SYSTEM = "系统"
PORTAL = "代理中心"


def register_views(appbuilder: AppBuilder) -> None:
    add = appbuilder.add_view
    add(OrderView, "订单查询", icon="fa-list-alt", category=ORDERS, category_icon="fa-shopping-cart")

    add(AgentView, "代理列表", icon="fa-users", category=AGENTS, category_icon="fa-sitemap")
    add(TierView, "代理等级", icon="fa-signal", category=AGENTS)
    add(WalletAdjustView, "余额调整", href="/wallet-adjust/form", icon="fa-exchange", category=AGENTS)

    add(CategoryView, "商品分类", icon="fa-folder", category=CATALOG, category_icon="fa-cubes")
    add(ProductView, "商品", icon="fa-cube", category=CATALOG)
    add(TierPriceView, "等级价格", icon="fa-tags", category=CATALOG)
    add(PriceRuleView, "限时价格", icon="fa-clock-o", category=CATALOG)
    add(SupplierView, "上游供应商", icon="fa-truck", category=CATALOG)

    add(CardSecretView, "卡密列表", icon="fa-key", category=STOCK, category_icon="fa-archive")
    add(CardImportFormView, "导入卡密", href="/card-import/", icon="fa-upload", category=STOCK)
    add(CardImportView, "导入批次", icon="fa-history", category=STOCK)
    add(StockAlertView, "补货提醒", icon="fa-bell", category=STOCK)

    add(AccountView, "账户", icon="fa-book", category=LEDGER, category_icon="fa-money")
    add(JournalView, "凭证", icon="fa-file-text-o", category=LEDGER)
    add(PostingView, "分录", icon="fa-list", category=LEDGER)

    add(AuditView, "审计日志", icon="fa-shield", category=SYSTEM, category_icon="fa-cog")

    portal.register(appbuilder, PORTAL)

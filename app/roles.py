"""Who may do what: one declared table (screen × permission × roles), and FAB_ROLES generated from it.

`SCREENS` names every view-menu FAB registers (a view class, a menu entry or a menu category) and, for each of its
permissions, the roles that hold it; `NOBODY` is an explicit refusal. Admin (FAB's AUTH_ROLE_ADMIN, a database
role) holds every permission and is not listed. `ROLES` (FAB_ROLES) is built from the table: per role, the views
sharing one set of permissions become one anchored pattern (`^(A|B)$`, matched by FAB with re.match).

tests/test_roles_matrix.py starts the app, reads every (view, permission) FAB registered and what each role is
actually granted, and fails when a registered pair is missing here, when a pair here is not registered, or when a
grant differs: a new screen, action or menu entry must be added to this table (and so reviewed) before the tests
pass. Roles (DESIGN.md "Security and trust"):
- Manager reads everything (lists, records, dashboards, queues, the risk screens, settings that have a read view)
  and changes nothing; the only exception is its own account (SELF_SERVICE).
- Finance (财务) approves, rejects and retries withdrawals, refunds orders (and retries or confirms refunds), and
  reads the money screens, the masked real-name records, the audit log and the money dashboards.
- Support (客服) finds orders and agents, sees card secrets masked, works the dispute queue (a dispute resolved with
  a refund is refunded by the dispute service) and the risk review queue.
- Agent sees only the portal, scoped to itself and its downline.
"""
from __future__ import annotations

import re

M, F, S, A = "Manager", "Finance", "Support", "Agent"
ROLE_NAMES = (M, F, S, A)
NOBODY: tuple[str, ...] = ()
STAFF = (M, F, S)

LIST, SHOW, INDEX, MENU = "can_list", "can_show", "can_index", "menu_access"
ADD, EDIT, DELETE, DOWNLOAD = "can_add", "can_edit", "can_delete", "can_download"

# Permissions that only read: Manager may hold no other (except SELF_SERVICE). can_export downloads a file of what
# the reader may already list (the audit log export); the download is audited.
READ_ONLY_PERMISSIONS = frozenset({LIST, SHOW, INDEX, MENU, "can_get", "can_export"})
# A staff member's own account (own details, own password): not business data, allowed to every role.
SELF_SERVICE = frozenset({
    ("UserDBModelView", "can_userinfo"), ("UserDBModelView", "userinfoedit"), ("UserDBModelView", "resetmypassword"),
    ("ResetMyPasswordView", "can_this_form_get"), ("ResetMyPasswordView", "can_this_form_post"),
    ("UserInfoEditView", "can_this_form_get"), ("UserInfoEditView", "can_this_form_post"),
    # own two-factor sign-in (app/twofactor): enrol, new recovery codes, turn it off; staff only (see SCREENS)
    ("TwoFactorView", "can_index"), ("TwoFactorView", "can_activate"), ("TwoFactorView", "can_regenerate"),
    ("TwoFactorView", "can_disable"),
})


def read(*roles: str) -> dict[str, tuple[str, ...]]:
    """A ModelView's list and show pages for these roles."""
    return {LIST: roles, SHOW: roles}


def crud(*readers: str) -> dict[str, tuple[str, ...]]:
    """A full ModelView (add, edit, delete, download) that these roles only read; changes stay with Admin."""
    return {**read(*readers), ADD: NOBODY, EDIT: NOBODY, DELETE: NOBODY, DOWNLOAD: NOBODY}


def _self_service(view: str) -> dict[str, tuple[str, ...]]:
    return {perm: ROLE_NAMES for name, perm in SELF_SERVICE if name == view}


SCREENS: dict[str, dict[str, tuple[str, ...]]] = {
    # ------------------------------------------------------------------------------------- 工作台 (app/workbench)
    # Every staff role's home: today against yesterday and its own to-do list (each item only if its screen opens).
    "工作台": {MENU: STAFF},
    "WorkbenchView": {INDEX: STAFF},
    # ------------------------------------------------------------------------------------- 订单 (app/orders)
    "订单与售后": {MENU: STAFF},  # menu category: orders, 售后 (disputes, coupons, support tools)
    "订单查询": {MENU: STAFF},
    "OrderView": read(M, F, S),
    # 发货通知 (app/notices): delivery e-mails and SMS; support resends a failed one (audited), Manager reads.
    "发货通知失败": {MENU: (M, S)},
    "DeliveryNoticeView": {**read(M, S), "resend": (S,)},
    # ------------------------------------------------------------------------------------- 代理管理 (app/agents)
    "代理与佣金": {MENU: STAFF},  # menu category: agents, tiers, shops, commissions, team bonus
    "代理列表": {MENU: (M, S)},
    "AgentView": {**read(M, S), ADD: NOBODY, EDIT: NOBODY},
    "代理等级": {MENU: (M,)},
    "TierView": crud(M),
    "余额调整": {MENU: NOBODY},
    # 分站 (app/agentshops): Manager and Support read every shop; suspending, resuming and deciding custom domains
    # stay with Admin (audited).
    "分站列表": {MENU: (M, S)},
    "ShopAdminView": {**read(M, S), "suspend": NOBODY, "resume": NOBODY},
    "分站域名": {MENU: (M,)},
    "ShopDomainView": {**read(M), "approve_domain": NOBODY, "reject_domain": NOBODY},
    "WalletAdjustView": {"can_this_form_get": NOBODY, "can_this_form_post": NOBODY},
    # 提现 and 实名 (app/network/network_views.py): Finance decides, Manager reads.
    "提现审核": {MENU: (M, F)},
    "WithdrawalQueueView": {INDEX: (M, F), "can_approve": (F,), "can_reject": (F,), "can_retry": (F,)},
    "提现记录": {MENU: (M, F)},
    "WithdrawalView": read(M, F),
    "实名认证记录": {MENU: (M, F)},
    "RealNameAdminView": read(M, F),  # masked values only
    # 结算与佣金 (app/network/commission_views.py); settling now stays with Admin.
    "结算记录": {MENU: (M, F)},
    "SettlementRunView": read(M, F),
    "佣金明细": {MENU: (M, F)},
    "CommissionView": read(M, F),
    "SettleNowView": {"can_settle": NOBODY},
    "团队业绩奖规则": {MENU: (M,)},
    "TeamBonusRuleView": crud(M),
    "团队业绩奖发放": {MENU: (M, F)},
    "TeamBonusAwardView": read(M, F),
    # ------------------------------------------------------------------------------------- 商品管理 (app/catalog)
    "商品管理": {MENU: (M, S)},  # menu category: catalog, suppliers, card stock
    "商品分类": {MENU: (M,)},
    "CategoryView": crud(M),
    "商品": {MENU: (M, S)},
    "ProductView": crud(M, S),
    "等级价格": {MENU: (M,)},
    "TierPriceView": crud(M),
    "限时价格": {MENU: (M,)},
    "PriceRuleView": crud(M),
    "上游供应商": {MENU: (M, S)},
    "SupplierView": {**crud(M, S), "sync": NOBODY},  # never its secrets
    "货源映射": {MENU: (M, S)},
    "SupplierProductView": crud(M, S),
    "供应商余额提醒": {MENU: (M, S)},
    "SupplierAlertView": read(M, S),
    # ------------------------------------------------------------------------------------- 卡密库存
    "卡密列表": {MENU: (M, S)},
    "CardSecretView": read(M, S),  # masked
    "导入卡密": {MENU: NOBODY},
    "CardImportFormView": {"can_form": NOBODY, "can_submit": NOBODY},
    "导入批次": {MENU: (M,)},
    "CardImportView": read(M),
    "补货提醒": {MENU: (M, S)},
    "StockAlertView": read(M, S),
    # ------------------------------------------------------------------------------------- 财务账本 (app/ledger)
    "资金": {MENU: STAFF},  # menu category: ledger, payments, refunds, reconciliation, withdrawals
    "账户": {MENU: (M, F)},
    "AccountView": read(M, F),
    "凭证": {MENU: (M, F)},
    "JournalView": read(M, F),
    "分录": {MENU: (M, F)},
    "PostingView": read(M, F),
    # ------------------------------------------------------------------------------------- 支付 (app/payments)
    "收款记录": {MENU: STAFF},
    "PaymentView": read(M, F, S),
    "支付通知": {MENU: STAFF},
    "PaymentNotificationView": read(M, F, S),
    "退款记录": {MENU: STAFF},
    "RefundView": {**read(M, F, S), "retry": (F,), "confirm_paid": (F,)},
    "RefundFormView": {"can_form": (F,)},  # /order-refund/<order_no>: Finance refunds an order
    "支付告警": {MENU: STAFF},
    "PaymentAlertView": read(M, F, S),
    "人工确认收款": {MENU: NOBODY},
    "ManualConfirmView": {"can_form": NOBODY},
    "支付渠道设置": {MENU: (M,)},
    "PaymentChannelView": {INDEX: (M,), EDIT: NOBODY},  # the list shows no key
    "商城首页": {MENU: NOBODY},
    "对账": {MENU: (M, F)},
    "ReconciliationView": {INDEX: (M, F), SHOW: (M, F), "can_upload": NOBODY},
    "充值记录": {MENU: (M, F)},
    "WalletTopUpView": read(M, F),
    # 售后 (app/payments/dispute_views.py)
    "维权队列": {MENU: (M, S)},
    "DisputeQueueView": {INDEX: (M, S), "can_resolve": (S,)},
    "维权记录": {MENU: (M, S)},
    "DisputeView": read(M, S),
    "优惠券": {MENU: (M,)},
    "CouponView": crud(M),
    "MyDisputeView": {"can_file": (A,)},
    # 客服工具 (app/support): find orders by phone / contact / account (masked results), the delivery promise's
    # overdue top-ups, bulk compensation (Support issues, audited; Manager sees the page and the records).
    "客服查单": {MENU: (M, S)},
    "SupportSearchView": {INDEX: (M, S)},
    "到账超时": {MENU: (M, S)},
    "DeliverySlaView": {INDEX: (M, S)},
    "批量补偿": {MENU: (M, S)},
    "CompensationView": {INDEX: (M, S), "can_preview": (S,), "can_issue": (S,)},
    "补偿记录": {MENU: (M, S)},
    "CompensationBatchView": read(M, S),
    "CompensationOrderView": read(M, S),
    # ------------------------------------------------------------------------------------- 风控 (app/risk)
    "风控": {MENU: (M, S)},
    "风控审核": {MENU: (M, S)},
    "RiskReviewView": {INDEX: (M, S), SHOW: (M, S), "can_approve": (S,), "can_reject": (S,)},
    "风控名单": {MENU: (M, S)},
    "RiskListView": {**read(M, S), ADD: NOBODY, "can_remove": NOBODY, "can_expire": NOBODY},
    "风控规则": {MENU: (M,)},
    "RiskRuleView": {**read(M), ADD: NOBODY, EDIT: NOBODY},
    "风控日志": {MENU: (M, S)},
    "RiskDecisionView": read(M, S),
    # 共享名单 (app/risk/feed*): Manager reads the page and the imported entries (Support too: a held order names
    # its source); keys, identity, partners, legal basis, export and import stay with Admin (audited).
    "共享名单": {MENU: (M,)},
    "RiskFeedView": {INDEX: (M,), "can_manage": NOBODY},
    "共享名单条目": {MENU: (M, S)},
    "RiskFeedEntryView": {**read(M, S), "remove": NOBODY},
    "风控模型": {MENU: (M,)},
    "RiskModelView": {**read(M), "can_promote": NOBODY},  # promotion: Admin only (re-checked against the rules)
    # ------------------------------------------------------------------------------------- 系统
    "系统": {MENU: STAFF},
    # Two-factor sign-in (app/twofactor): each staff member's own enrolment; the list of who has it on is read by
    # Manager, and resetting someone's (a lost phone) stays with Admin.
    "两步验证": {MENU: STAFF},
    "TwoFactorView": {perm: STAFF for name, perm in SELF_SERVICE if name == "TwoFactorView"},
    "两步验证管理": {MENU: (M,)},
    "TwoFactorAdminView": {**read(M), "reset_two_factor": NOBODY},
    "公告": {MENU: (M,)},
    "AnnouncementView": crud(M),  # notices on the agents' and staff's home pages; Admin writes them (audited)
    "审计日志": {MENU: (M, F)},
    "AuditView": {**read(M, F), "can_export": (M, F)},
    "任务队列": {MENU: NOBODY},
    "JobsView": {INDEX: NOBODY, LIST: NOBODY, "can_retry": NOBODY, "can_retry_all": NOBODY,
                 "can_cancel": NOBODY},  # operations: job arguments and requeueing stay with Admin
    "平台设置": {MENU: NOBODY},
    "PlatformSettingsView": {"can_this_form_get": NOBODY, "can_this_form_post": NOBODY},  # a form, no read view
    # 告警 (app/alerts): the log is read by Manager and Support (and Admin); channels (their secrets write-only and
    # masked) and rules are changed by Admin only, read by Manager; a test message and a resend stay with Admin.
    "告警记录": {MENU: (M, S)},
    "AlertView": read(M, S),
    "AlertDeliveryView": {**read(M, S), "resend": NOBODY},
    "告警渠道": {MENU: (M,)},
    "AlertChannelView": {**crud(M), "test": NOBODY},
    "告警规则": {MENU: (M,)},
    "AlertRuleView": {**read(M), EDIT: NOBODY},
    "API 密钥管理": {MENU: (M,)},
    "ApiKeyAdminView": {**read(M), "revoke": NOBODY},
    "回调记录": {MENU: (M,)},
    "CallbackAttemptAdminView": read(M),
    # ------------------------------------------------------------------------------------- 数据看板 (dashboards)
    "数据看板": {MENU: (M, F, A)},
    "GMV 概览": {MENU: (M, F, A)},
    "GmvDashboardView": {SHOW: (M, F, A)},
    "商品与库存": {MENU: (M,)},
    "ProductsDashboardView": {SHOW: (M,)},
    "代理增长": {MENU: (M, A)},
    "AgentGrowthDashboardView": {SHOW: (M, A)},
    "用户画像": {MENU: (M, A)},
    "ProfileDashboardView": {SHOW: (M, A)},
    "资金流向": {MENU: (M, F, A)},
    "MoneyFlowDashboardView": {SHOW: (M, F, A)},
    "风控看板": {MENU: (M,)},
    "RiskDashboardView": {SHOW: (M,)},
    # ------------------------------------------------------------------------------------- 代理中心 (app/portal)
    "代理中心": {MENU: (A,)},
    "采购商品": {MENU: (A,)},
    "PortalView": {"can_buy": (A,), "can_buy_post": (A,), "can_order": (A,), "can_topup": (A,),
                   "can_topup_post": (A,)},
    # 批量提卡: an agent downloads its own orders' secrets (scoped in app.catalog.extraction)
    "批量提卡": {MENU: (A,)},
    "ExtractView": {"can_order_secrets": (A,), "can_extract": (A,), "can_extract_post": (A,)},
    "充值": {MENU: (A,)},
    "我的订单": {MENU: (A,)},
    "MyOrderView": read(A),
    "我的团队": {MENU: (A,)},
    "MyDownlineView": {**read(A), EDIT: (A,), "disable": (A,)},
    "我的账单": {MENU: (A,)},
    "MyStatementView": {LIST: (A,)},
    "API 密钥": {MENU: (A,)},
    "MyApiKeysView": {INDEX: (A,), "can_create": (A,), "can_revoke": (A,)},
    "我的回调记录": {MENU: (A,)},
    "MyCallbackAttemptView": read(A),
    "开放接口文档": {MENU: (A,)},
    "实名认证": {MENU: (A,)},
    "MyRealNameView": {INDEX: (A,), "can_submit": (A,)},
    "我的提现": {MENU: (A,)},
    "MyWithdrawalView": {INDEX: (A,), "can_create": (A,)},
    "邀请码": {MENU: (A,)},
    "InviteView": {INDEX: (A,), "can_create": (A,), "can_deactivate": (A,), "can_poster": (A,)},
    "团队结构": {MENU: (A,)},
    "TeamTreeView": {INDEX: (A,)},
    "我的佣金": {MENU: (A,)},
    "MyCommissionView": read(A),
    "我的分站": {MENU: (A,)},
    "MyShopView": {"can_read": (A,), "can_write": (A,)},  # its own shop only (app.agentshops.service.own_shop)
    "分站订单": {MENU: (A,)},
    "MyShopOrderView": read(A),  # its own shop's orders, contacts masked, no card secrets
    # ------------------------------------------------------------------------------------- FAB's own screens
    # Users, roles and permissions stay with Admin; everyone has their own account page and password.
    "UserDBModelView": {**crud(), "resetpasswords": NOBODY, **_self_service("UserDBModelView")},
    "ResetMyPasswordView": _self_service("ResetMyPasswordView"),
    "UserInfoEditView": _self_service("UserInfoEditView"),
    "ResetPasswordView": {"can_this_form_get": NOBODY, "can_this_form_post": NOBODY},
    "RoleModelView": {**crud(), "copyrole": NOBODY},
    "UserGroupModelView": crud(),
    "PermissionModelView": {LIST: NOBODY},
    "ViewMenuModelView": {LIST: NOBODY},
    "PermissionViewModelView": {LIST: NOBODY},
    "UserStatsChartView": {"can_chart": NOBODY},
    "MenuApi": {"can_get": NOBODY},
    "Security": {MENU: NOBODY},
    "List Users": {MENU: NOBODY},
    "List Roles": {MENU: NOBODY},
    "List Groups": {MENU: NOBODY},
    "User's Statistics": {MENU: NOBODY},
    "Base Permissions": {MENU: NOBODY},
    "Views/Menus": {MENU: NOBODY},
    "Permission on Views/Menus": {MENU: NOBODY},
}

# FAB stores each pattern as a view-menu name (VARCHAR 250) and a permission name (VARCHAR 100): a longer pattern
# fails and the role is never created, so the views are split over several patterns.
_VIEW_PATTERN_MAX = 250
_PERMISSION_PATTERN_MAX = 100


def granted(role: str, screens: dict[str, dict[str, tuple[str, ...]]] | None = None) -> set[tuple[str, str]]:
    """Every (view, permission) the table gives `role`."""
    screens = SCREENS if screens is None else screens
    return {(view, perm) for view, perms in screens.items() for perm, roles in perms.items() if role in roles}


def _pattern(names: list[str]) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def _view_patterns(views: list[str]) -> list[str]:
    """Anchored alternations of `views`, each short enough for FAB's view-menu name column."""
    patterns, chunk = [], []
    for view in views:
        if chunk and len(_pattern([*chunk, view])) > _VIEW_PATTERN_MAX:
            patterns.append(_pattern(chunk))
            chunk = []
        chunk.append(view)
    if chunk:
        patterns.append(_pattern(chunk))
    return patterns


def fab_roles(screens: dict[str, dict[str, tuple[str, ...]]] | None = None) -> dict[str, list[list[str]]]:
    """FAB_ROLES from the table: for each role, [view pattern, permission pattern] pairs, exact (anchored)."""
    screens = SCREENS if screens is None else screens
    roles: dict[str, list[list[str]]] = {}
    for role in ROLE_NAMES:
        by_permissions: dict[tuple[str, ...], list[str]] = {}
        for view, perms in screens.items():
            allowed = tuple(sorted(p for p, who in perms.items() if role in who))
            if allowed:
                by_permissions.setdefault(allowed, []).append(view)
        pairs = []
        for allowed, views in sorted(by_permissions.items()):
            permission_pattern = _pattern(list(allowed))
            if len(permission_pattern) > _PERMISSION_PATTERN_MAX:
                raise ValueError(f"{role}: permission pattern too long for FAB: {permission_pattern}")
            pairs.extend([view_pattern, permission_pattern] for view_pattern in _view_patterns(sorted(views)))
        roles[role] = pairs
    return roles


ROLES = fab_roles()

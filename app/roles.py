"""FAB_ROLES: the built-in roles besides Admin. Patterns are anchored (FAB matches with re.match)."""
from __future__ import annotations

READ = "^(can_list|can_show)$"
_ADMIN_READ_VIEWS = ("OrderView|AgentView|TierView|CategoryView|ProductView|TierPriceView|PriceRuleView|"
                     "SupplierView|CardSecretView|CardImportView|StockAlertView|AccountView|JournalView|"
                     "PostingView|AuditView")
# FAB stores each pattern as a view-menu name (VARCHAR 250): a longer pattern fails and the role is never created.
_ADMIN_READ_VIEWS_2 = ("ApiKeyAdminView|CallbackAttemptAdminView|PaymentView|PaymentNotificationView|"
                       "RefundView|WalletTopUpView|PaymentAlertView")

ROLES = {
    # Managers read everything and work review queues (later issues add the queues).
    "Manager": [
        [f"^({_ADMIN_READ_VIEWS})$", READ],
        [f"^({_ADMIN_READ_VIEWS_2})$", READ],
        ["^(DisputeView|CouponView)$", READ],
        ["^DisputeQueueView$", "^can_index$"],
        ["^(订单|代理管理|商品管理|卡密库存|财务账本|系统|订单查询|代理列表|代理等级|商品分类|商品|等级价格|限时价格|"
         "上游供应商|卡密列表|导入批次|补货提醒|账户|凭证|分录|审计日志|API 密钥管理|回调记录|支付|收款记录|支付通知|"
         "退款记录|充值记录|对账|售后|维权队列|维权记录|优惠券|支付告警)$", "^menu_access$"],
        ["^ReconciliationView$", "^can_(index|show)$"],
        ["^WithdrawalQueueView$", "^can_(index|approve|reject|retry)$"],
        ["^(WithdrawalView|RealNameAdminView)$", READ],
        ["^(提现审核|提现记录|实名认证记录)$", "^menu_access$"],
        ["^(SettlementRunView|CommissionView)$", READ],
        ["^(结算记录|佣金明细)$", "^menu_access$"],
        ["^(TeamBonusRuleView|TeamBonusAwardView)$", READ],
        ["^(团队业绩奖规则|团队业绩奖发放)$", "^menu_access$"],
        # Direct top-ups: suppliers (never their secrets), mappings and alerts, read only.
        ["^(SupplierProductView|SupplierAlertView)$", READ],
        ["^(货源映射|供应商余额提醒)$", "^menu_access$"],
        # Dashboards (dashboards/__init__.py): each view's can_show guards its FAB page and its Dash routes.
        ["^(GmvDashboardView|ProductsDashboardView)$", "^can_show$"],
        ["^(数据看板|GMV 概览|商品与库存)$", "^menu_access$"],
        ["^(AgentGrowthDashboardView|ProfileDashboardView|MoneyFlowDashboardView)$", "^can_show$"],
        ["^(代理增长|用户画像|资金流向)$", "^menu_access$"],
        # Risk control (风控): lists, rules, the decision log and the review queue, read only; its dashboard.
        ["^(RiskListView|RiskRuleView|RiskDecisionView)$", READ],
        ["^RiskReviewView$", "^can_(index|show)$"],
        ["^RiskDashboardView$", "^can_show$"],
        ["^(风控|风控名单|风控规则|风控审核|风控日志|风控看板)$", "^menu_access$"],
        # --- Staff two-factor sign-in (app/twofactor, issue 14): the user's own enrolment page (两步验证) and the
        # read-only list of who has it on (两步验证管理; its reset_two_factor action stays Admin's).
        # A Finance (财务) role needs ["^TwoFactorView$", "^can_(index|activate|regenerate|disable)$"] and
        # ["^(系统|两步验证)$", "^menu_access$"] too, or it cannot enrol when the setting makes 2FA mandatory.
        ["^TwoFactorView$", "^can_(index|activate|regenerate|disable)$"],
        ["^TwoFactorAdminView$", READ],
        ["^(两步验证|两步验证管理)$", "^menu_access$"],
        # --- end two-factor
    ],
    # Support (客服) finds any order and agent fast; sees card secrets masked only.
    "Support": [
        ["^(OrderView|AgentView|CardSecretView|StockAlertView|ProductView|PaymentView|PaymentNotificationView|"
         "RefundView|PaymentAlertView)$", READ],
        ["^RefundFormView$", "^can_form$"],
        ["^RefundView$", "^(retry|confirm_paid)$"],
        ["^DisputeView$", READ],
        ["^DisputeQueueView$", "^can_(index|resolve)$"],
        ["^(售后|维权队列|维权记录)$", "^menu_access$"],
        ["^(订单|代理管理|商品管理|卡密库存|订单查询|代理列表|商品|卡密列表|补货提醒|支付|收款记录|支付通知|退款记录|"
         "支付告警)$", "^menu_access$"],
        ["^(SupplierView|SupplierProductView|SupplierAlertView)$", READ],
        ["^(上游供应商|货源映射|供应商余额提醒)$", "^menu_access$"],
        # Risk control: Support works the review queue (approve / reject, add to the blacklist) and reads the lists.
        ["^RiskReviewView$", "^can_(index|show|approve|reject)$"],
        ["^(RiskListView|RiskDecisionView)$", READ],
        ["^(风控|风控名单|风控审核|风控日志)$", "^menu_access$"],
        # --- Staff two-factor sign-in (app/twofactor, issue 14): the user's own enrolment page, under 系统.
        ["^TwoFactorView$", "^can_(index|activate|regenerate|disable)$"],
        ["^(系统|两步验证)$", "^menu_access$"],
        # --- end two-factor
    ],
    # Agents see only the portal, scoped to themselves and their downline.
    "Agent": [
        ["^PortalView$", "^can_(buy|buy_post|order|topup|topup_post)$"],
        ["^MyOrderView$", READ],
        ["^MyDownlineView$", "^(can_list|can_show|can_edit|disable)$"],
        ["^MyStatementView$", "^can_list$"],
        ["^MyApiKeysView$", "^can_(index|create|revoke)$"],
        ["^MyCallbackAttemptView$", READ],
        ["^MyDisputeView$", "^can_file$"],
        ["^MyRealNameView$", "^can_(index|submit)$"],
        ["^MyWithdrawalView$", "^can_(index|create)$"],
        ["^(实名认证|我的提现)$", "^menu_access$"],
        ["^InviteView$", "^can_(index|create|deactivate|poster)$"],
        ["^TeamTreeView$", "^can_index$"],
        ["^(代理中心|采购商品|充值|我的订单|我的团队|我的账单|API 密钥|我的回调记录|开放接口文档)$", "^menu_access$"],
        ["^(邀请码|团队结构)$", "^menu_access$"],
        ["^MyCommissionView$", READ],
        ["^我的佣金$", "^menu_access$"],
        # Dashboards, scoped to the agent's own branch by app.scope.dashboard_scope.
        ["^GmvDashboardView$", "^can_show$"],
        ["^(数据看板|GMV 概览)$", "^menu_access$"],
        ["^(AgentGrowthDashboardView|ProfileDashboardView|MoneyFlowDashboardView)$", "^can_show$"],
        ["^(代理增长|用户画像|资金流向)$", "^menu_access$"],
        ["^UserDBModelView$", "^(can_userinfo|userinfoedit|resetmypassword)$"],
        ["^(ResetMyPasswordView|UserInfoEditView)$", "^(can_this_form_get|can_this_form_post)$"],
    ],
}

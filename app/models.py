"""Import every domain's tables, so metadata is complete wherever the app starts (web, CLI, Alembic, tests)."""
from flask_appbuilder.security.sqla.models import User  # noqa: F401  (ab_user, for relationships)

from app.agents.models import Agent, Tier  # noqa: F401
from app.agentshops.models import AgentShop, AgentShopDomain, AgentShopMaterial, AgentShopProduct  # noqa: F401
from app.alerts.models import Alert, AlertChannel, AlertDelivery, AlertRule  # noqa: F401
from app.analytics.models import (  # noqa: F401
    AgentDaily,
    MoneyDaily,
    ProfileDaily,
    RollupState,
    SalesDaily,
    ShopDaily,
)
from app.announcements.models import Announcement  # noqa: F401
from app.audit.models import AuditEntry  # noqa: F401
from app.cache import CacheVersion  # noqa: F401
from app.catalog.models import (  # noqa: F401
    CardImport,
    CardSecret,
    CardSecretUse,
    Category,
    PriceRule,
    Product,
    SecretDownload,
    StockAlert,
    Supplier,
    TierPrice,
)
from app.chain.models import ChainHead, ChainRecord  # noqa: F401
from app.ledger.models import Account, Journal, Posting  # noqa: F401
from app.network.models import (  # noqa: F401
    Commission,
    InviteCode,
    RealNameAttempt,
    RealNameVerification,
    SettlementRun,
    TeamBonusAward,
    TeamBonusRule,
    Withdrawal,
)
from app.notices.models import DeliveryNotice  # noqa: F401
from app.openapi.models import ApiKey, ApiNonce, CallbackAttempt  # noqa: F401
from app.orders.models import Order  # noqa: F401
from app.outbox.models import OutboxMessage  # noqa: F401
from app.payments.models import (  # noqa: F401
    ChannelOrder,
    Coupon,
    CouponRedemption,
    Dispute,
    LookupAttempt,
    OrderCheckout,
    Payment,
    PaymentAlert,
    PaymentChannel,
    PaymentNotification,
    ReconciliationDifference,
    Refund,
    StatementImport,
    WalletTopUp,
)
from app.risk.feed_models import (  # noqa: F401
    RiskFeedEntry,
    RiskFeedPartner,
    RiskFeedPublisher,
    RiskLegalBasis,
    RiskListShare,
    RiskSharingKey,
)
from app.risk.models import RiskDecision, RiskEvent, RiskListEntry, RiskRule, RiskRuleVersion  # noqa: F401
from app.settings.models import PlatformSetting  # noqa: F401
from app.suppliers.models import RechargeAttempt, RechargeEvent, SupplierAlert, SupplierProduct  # noqa: F401
from app.support.models import CompensationBatch, CompensationOrder  # noqa: F401
from app.twofactor.models import StaffRecoveryCode, StaffTwoFactor  # noqa: F401

"""Risk control's words, in one place for the screens, the dashboard and the export (lazy: Chinese by default,
English after /lang/en; the export, made outside a request, reads the Chinese)."""
from __future__ import annotations

from flask_babel import lazy_gettext as _

OUTCOME_TEXT = {"allow": _("放行"), "review": _("人工审核"), "block": _("拦截")}
STAGE_TEXT = {"list": _("名单"), "limit": _("限额"), "rule": _("规则"), "none": _("无")}
RULE_ACTION_TEXT = {"score": _("加分"), "review": _("人工审核"), "block": _("拦截")}
EVENT_TEXT = {"checkout": _("商城下单"), "shop_checkout": _("分站下单"), "openapi_order": _("开放接口下单"),
              "portal_purchase": _("代理采购"), "wallet_topup": _("钱包充值"), "withdrawal": _("提现"),
              "registration": _("注册"), "login": _("登录"), "payment": _("支付")}

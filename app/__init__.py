"""create_app(): wires extensions, FAB, views, CLI and error handlers together; no rules live here."""
from __future__ import annotations

import logging

from flask import Flask

from config import Config, settle_environment


def create_app(overrides: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=False)
    app.config.from_object(Config)
    if overrides:
        app.config.update(overrides)
    settle_environment(app.config)
    from app.machines import SessionInterface

    app.session_interface = SessionInterface()  # no session on signed machine endpoints (app/machines.py)
    from app.ops.logs import configure_from

    configure_from(app.config)  # JSON lines outside development (LOG_FORMAT), each with its request id
    logging.getLogger("flask_appbuilder").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # urllib3 logs every request line at DEBUG: 易支付's V1 query carries the merchant key in its query string.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)
    if app.config.get("KAMENG_ENV") != "development" and app.config.get("OUTBOUND_ALLOW_PRIVATE"):
        logging.getLogger(__name__).warning("OUTBOUND_ALLOW_PRIVATE is on outside development: callbacks and "
                                            "adapters may reach loopback and private addresses (app/outbound.py)")

    from app import models  # noqa: F401  (every table registered before FAB and Alembic look)
    from app.extensions import csrf, db, keep_prepared_statements, migrate, ping_idle_connections
    from app.ops.outage import engine_options

    engine_options(app.config)  # recycle, connect timeout: the pool survives a database restart
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            ping_idle_connections(db.engine)
            keep_prepared_statements(db.engine)
    csrf.init_app(app)
    migrate.init_app(app, db, directory=str(app.root_path + "/../migrations"))

    from app.agentshops import hosts as shop_hosts

    shop_hosts.init_app(app)  # an approved agent-shop domain is served as that shop; inside ProxyFix
    if app.config.get("TRUSTED_PROXIES"):
        from werkzeug.middleware.proxy_fix import ProxyFix
        n = int(app.config["TRUSTED_PROXIES"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)

    from flask_appbuilder import AppBuilder

    from app.roles import ROLES

    app.config.setdefault("FAB_ROLES", ROLES)
    with app.app_context():
        appbuilder = AppBuilder(update_perms=_may_update_perms(app))
        appbuilder.init_app(app, db.session)
        _machines_choose_their_language(app)
        from app.views import register_views
        register_views(appbuilder)
        from app.openapi.views import register as register_openapi_views
        register_openapi_views(appbuilder)
        from app.payments.views import register as register_payment_views
        register_payment_views(appbuilder)
        from app.risk.views import register as register_risk_views
        register_risk_views(appbuilder)
        from app.settings.views import register as register_settings_views
        register_settings_views(appbuilder)
        from app.notices.views import register as register_notice_views
        register_notice_views(appbuilder)
        from app.alerts.views import register as register_alert_views
        register_alert_views(appbuilder)
        from app.support.views import register as register_support_views
        register_support_views(appbuilder)
        from app.twofactor.views import register as register_two_factor_views
        register_two_factor_views(appbuilder)
        from app.portal.filters import register_template_helpers
        register_template_helpers(app)
        from dashboards import init_dashboards
        init_dashboards(app, appbuilder)
        from app.views import order_menu
        order_menu(appbuilder)  # last: every screen is registered

    from app.alerts import service as alerts  # noqa: F401  (registers the alert delivery outbox handler)
    from app.analytics import service as rollups
    from app.notices import service as notices  # noqa: F401  (registers the delivery notice outbox handler)
    from app.openapi import api as openapi_api
    from app.openapi import callbacks  # noqa: F401  (registers the outbox handler)
    from app.outbox import service as outbox
    from app.payments import topups  # noqa: F401  (registers the top-ups' payments with app.payments.service)

    # Teardowns run in reverse order: the outbox first (with jobs inline it runs the request's jobs, a top-up
    # delivered or failed among them), then the fold of every delivery and failure the request and its jobs wrote.
    rollups.init_app(app)
    outbox.init_app(app)
    openapi_api.register(app)
    from app.shop import api as shop_api

    shop_api.register(app)
    from app.suppliers import api as supplier_api  # also registers the recharge outbox handler

    supplier_api.register(app)
    from app.agentshops import api as agentshop_api

    agentshop_api.register(app)  # /s/<code>/: agents' shops (分站)
    from app.network.invite_views import register_public as register_invites

    register_invites(app)
    from app.chain import views as chain_views

    chain_views.register(app)  # /trust/: the public head hashes of the tamper-evident records

    from app import cache, headers

    headers.init_app(app)
    app.before_request(cache.forget_unit)  # each request reads the cache version afresh (app.cache)

    from app.cli import kameng_cli
    app.cli.add_command(kameng_cli)
    from app import ops

    ops.init_app(app)  # probes, outage answers, metrics, request ids: last, so they see everything above
    return app



def _may_update_perms(app: Flask) -> bool:
    """FAB writes its permissions at start-up; before the first `flask db upgrade` its tables do not exist yet and
    each attempt would log a traceback (hundreds of them), so it waits for the next start."""
    if not app.config.get("FAB_UPDATE_PERMS", True):
        return False
    if app.config.get("FAB_CREATE_DB", True):
        return True  # FAB creates its tables first
    from sqlalchemy import inspect

    from app.extensions import db

    return inspect(db.engine).has_table("ab_permission_view")


def _machines_choose_their_language(app: Flask) -> None:
    """The Open API is signed, not signed in: its callers' Accept-Language picks the language of its messages
    (Chinese by default; `en` for English), never a session. Everyone else keeps FAB's choice (the session's, set
    by /lang/<code>); a storefront API call that has none gets the default without a session being started."""
    from flask import has_request_context, request, session

    from app.machines import userless

    babel = app.extensions["babel"]
    fab_selector = babel.locale_selector

    def select_locale():
        if has_request_context() and request.path.startswith("/open/"):
            return (request.accept_languages.best_match(list(app.config["LANGUAGES"]))
                    or app.config["BABEL_DEFAULT_LOCALE"])
        if (has_request_context() and "locale" not in session and "_l_" not in request.args
                and userless(request.path)):
            # A storefront API call without a chosen language (a mini-program, a first call; FAB's ?_l_= still
            # chooses): the default, without FAB writing it into a new session (a signed cookie per cookieless call).
            return app.config["BABEL_DEFAULT_LOCALE"]
        return fab_selector()

    babel.locale_selector = select_locale

"""Which site a request's Host names: the platform, an agent shop on its approved domain, or nothing.

A WSGI middleware inside ProxyFix (so a trusted proxy's X-Forwarded-Host is what it reads):
- an approved shop domain (app.agentshops.service.approved_hosts) is served as that shop: its path is rewritten
  under /s/<code>/ (`/` is the shop's home, `/buy/3` its checkout, `/api/products` its API), except static files
  and payment pages (/static/, /pay/), which are the platform's on every host. Nothing else answers there: the
  admin, the portal and the platform's storefront are not reachable through an agent's domain.
- outside development, a Host that is neither the platform's own (PUBLIC_BASE_URL, PLATFORM_HOSTS, the loopback
  names) nor an approved domain is answered 421 Misdirected Request, before any view runs: a domain an agent only
  requested, or one pointed at us by anybody, serves nothing.
- in development any other Host is the platform (localhost, 127.0.0.1, a LAN address).
"""
from __future__ import annotations

import logging

from flask import Flask, Response, request

from app.agentshops import service

SHOP_HOST_KEY = "kameng.shop_host"  # environ: the code of the shop this request's Host is the domain of
REFUSED_KEY = "kameng.host_refused"  # environ: a Host nobody serves here
PLATFORM_PREFIXES = ("/static/", "/pay/")
log = logging.getLogger(__name__)


class ShopHostRouter:
    def __init__(self, wsgi_app, flask_app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.flask_app = flask_app
        self._platform: set[str] | None = None  # from the configuration, read once

    def __call__(self, environ, start_response):
        host = service.normalize_host(environ.get("HTTP_HOST") or environ.get("SERVER_NAME"))
        config = self.flask_app.config
        development = config.get("KAMENG_ENV") == "development"
        if not development and host in self._platform_hosts():
            return self.wsgi_app(environ, start_response)
        if environ.get("PATH_INFO") in PROBE_PATHS:  # a load balancer's probe names whatever host it likes
            return self.wsgi_app(environ, start_response)
        code = self._shop_code(host)
        if code is not None:
            path = environ.get("PATH_INFO") or "/"
            if not path.startswith(PLATFORM_PREFIXES):
                environ["PATH_INFO"] = f"/s/{code}{path}"
            environ[SHOP_HOST_KEY] = code
            return self.wsgi_app(environ, start_response)
        if not development:
            environ[REFUSED_KEY] = True  # answered 421 by the first before_request (with the security headers)
        return self.wsgi_app(environ, start_response)

    def _platform_hosts(self) -> set[str]:
        if self._platform is None:
            self._platform = service.platform_hosts(self.flask_app.config)
        return self._platform

    def _shop_code(self, host: str) -> str | None:
        if not host:
            return None
        hosts = service.cached_hosts(self.flask_app)
        if hosts is None:
            with self.flask_app.app_context():
                try:
                    hosts = service.approved_hosts()
                except Exception:  # the database is down: no shop is served, the platform answers as it can
                    log.exception("could not read the approved shop domains")
                    return None
        return hosts.get(host)


PROBE_PATHS = ("/healthz", "/readyz")  # app/ops/health.py: the same answer on every host, nothing in it


def refuse_unknown_host():
    """before_request, first of all: a Host the router found nobody serves gets 421 and nothing else runs."""
    if request.environ.get(REFUSED_KEY):
        return Response("421 Misdirected Request: this host is not served here\n", status=421,
                        mimetype="text/plain")
    return None


def init_app(app: Flask) -> None:
    """Install the router inside ProxyFix (call before create_app wraps the app in ProxyFix), and the refusal."""
    app.wsgi_app = ShopHostRouter(app.wsgi_app, app)
    app.before_request_funcs.setdefault(None, []).insert(0, refuse_unknown_host)

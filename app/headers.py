"""Security headers on every answer, decided in one place.

- Framing: no page can be framed by another site (X-Frame-Options DENY, CSP `frame-ancestors 'none'`), except the
  Dash apps, which our own dashboard pages embed (`SAMEORIGIN` / `'self'`).
- Content-Security-Policy: scripts only from our origin, inline scripts only with this request's nonce
  (`csp_nonce()` in templates; FAB's own templates already ask for it) or, for Dash's renderer, their hash
  (`Dash.csp_hashes()`); no plugins, no foreign `<base>`. Styles may be inline (Dash, Plotly and Bootstrap set
  style attributes); images may be `data:` URIs.
- Caching: `Cache-Control: no-store` (and `Pragma: no-cache` for HTTP/1.0 caches) on every answer that can carry
  card secrets or personal data: every page or answer for a signed-in user (static files aside), every JSON answer
  (storefront API, Open API, Dash callbacks), every download (CSV / XLSX / attachment), and the storefront's
  lookup, dispute and signed order pages, which show card secrets without an account.
"""
from __future__ import annotations

import base64
import functools
import math
import secrets
import time

from flask import Flask, Response, current_app, request
from flask_login import current_user

from app.machines import sessionless

# The public pages that show an order's card secrets to whoever holds the order password or a signed link.
PUBLIC_SECRET_PATHS = ("/shop/lookup", "/shop/dispute", "/shop/order/", "/shop/api/", "/open/", "/pay/status/")
DOWNLOAD_TYPES = {"text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                  "application/vnd.ms-excel", "application/octet-stream"}
# Files that are the same for everyone: cacheable even for a signed-in user.
STATIC_TYPES = ("text/css", "application/javascript", "text/javascript", "font/", "image/", "application/font")
FRAMEABLE_PREFIXES = ("/dashboards/",)  # Dash apps, embedded by /analytics/<slug>/ of the same origin


def csp_nonce() -> str:
    """This request's script nonce (one per request, unguessable); templates write it on their inline scripts."""
    # Kept on the request, not on `g`: `g` lives as long as the app context, which can outlast one request.
    nonce = request.environ.get("kameng.csp_nonce")
    if nonce is None:
        nonce = request.environ["kameng.csp_nonce"] = base64.b64encode(secrets.token_bytes(16)).decode()
    return nonce


def content_security_policy(nonce: str, frameable: bool) -> str:
    head, tail = _policy_around_nonce(tuple(current_app.extensions.get("kameng_csp_hashes", ())), frameable)
    return head + nonce + tail


@functools.lru_cache(maxsize=16)
def _policy_around_nonce(hashes: tuple[str, ...], frameable: bool) -> tuple[str, str]:
    """The policy before and after the nonce: the same on every request (built once, not per answer)."""
    script = "script-src 'self' 'nonce-\0'" + (" " + " ".join(hashes) if hashes else "")
    policy = "; ".join([
        "default-src 'self'", script, "style-src 'self' 'unsafe-inline'", "img-src 'self' data:",
        "font-src 'self' data:", "connect-src 'self'", "object-src 'none'", "base-uri 'self'",
        "frame-src 'self'", "frame-ancestors " + ("'self'" if frameable else "'none'")])
    head, _, tail = policy.partition("\0")
    return head, tail


def needs_no_store(response: Response) -> bool:
    """Whether this answer may carry card secrets or personal data (see the module's docstring)."""
    if request.environ.get("kameng.outage"):  # an outage answer (app.ops.outage): the user may not be readable
        return True
    mimetype = response.mimetype or ""
    if mimetype == "application/json" or mimetype.endswith("+json") or mimetype in DOWNLOAD_TYPES:
        return True
    if "attachment" in response.headers.get("Content-Disposition", ""):
        return True
    if request.path.startswith(PUBLIC_SECRET_PATHS):
        return True
    if mimetype.startswith(STATIC_TYPES) or sessionless(request.path):  # a program's plain answer ("success")
        return False
    return bool(current_user and current_user.is_authenticated)


def secure_headers(response: Response) -> Response:
    """after_request: framing, CSP, sniffing, referrer and caching headers (a view's own choice is kept)."""
    frameable = request.path.startswith(FRAMEABLE_PREFIXES)
    # One pass over the answer's headers: werkzeug's setdefault raises and catches a KeyError per absent header.
    present = set(response.headers.keys(lower=True))
    defaults = [("X-Frame-Options", "SAMEORIGIN" if frameable else "DENY"),
                ("Content-Security-Policy", content_security_policy(csp_nonce(), frameable)),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "same-origin")]
    hsts_seconds = current_app.config.get("HSTS_SECONDS")  # production only (config.settle_environment)
    if hsts_seconds:
        defaults.append(("Strict-Transport-Security", f"max-age={hsts_seconds}; includeSubDomains"))
    for name, value in defaults:
        if name.lower() not in present:
            response.headers.add(name, value)
    if needs_no_store(response):
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


def no_store(response: Response) -> Response:
    """For a view that wants it said explicitly (secure_headers adds it anyway on the paths it knows)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def register_dash_hashes(app: Flask, hashes: list[str]) -> None:
    """The hashes of a Dash app's inline scripts (its renderer, clientside callbacks), allowed in script-src;
    as `Dash.csp_hashes()` gives them ("'sha256-...'"), called once the app's callbacks are all registered."""
    known = app.extensions.setdefault("kameng_csp_hashes", [])
    known.extend(h for h in hashes if h not in known)


def retry_after_on_rate_limit(response: Response) -> Response:
    """after_request: `Retry-After` on an answer refused by a Flask-Limiter limit, from that limit's window.

    Flask-Limiter's X-RateLimit-* headers on every answer are off (RATELIMIT_HEADERS_ENABLED): reading the window
    back cost two Redis round trips per request; a refused caller is the one that needs to know when to retry."""
    if response.status_code != 429 or "Retry-After" in response.headers:
        return response
    limiter = getattr(getattr(current_app, "appbuilder", None), "sm", None)
    limit = getattr(limiter, "limiter", None) and limiter.limiter.current_limit
    if limit is not None and limit.breached:
        try:
            response.headers["Retry-After"] = str(max(1, math.ceil(limit.window[0] - time.time())))
        except Exception:  # noqa: BLE001 - Redis gone meanwhile: the refusal stands without the hint
            pass
    return response


def init_app(app: Flask) -> None:
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.after_request(secure_headers)
    app.after_request(retry_after_on_rate_limit)

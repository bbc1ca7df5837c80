"""Machine endpoints: what the request pipeline does for callers that are programs, not signed-in people.

- Sessionless (`SESSIONLESS_PREFIXES`): the Open API (every request signed with the caller's key) and the payment
  channels' and suppliers' notifications (signed by the channel or supplier). A cookie proves nothing there, so
  they get no session: none is read from a cookie, none is ever written back (`SessionInterface`), and no signed-in
  user is loaded. Their language comes from Accept-Language (the Open API) or is the default.
- The storefront's JSON API (`/shop/api/`, an agent shop's `/s/<code>/api/`) is called by the storefront's own
  pages: its session is kept (it carries the buyer's language, chosen at /lang/<code>), but it never acts as a
  signed-in user, so the staff sign-in checks (session fingerprint, two-factor enrolment) are not run for it.

Everything else a request gets is unchanged for these paths: security headers, rate limits, request id, metrics,
CSRF as each blueprint decides, the 421 for unknown hosts, outage answers.
"""
from __future__ import annotations

import re

from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

SESSIONLESS_PREFIXES = ("/open/", "/pay/notify/", "/pay/refund-notify/", "/supplier/notify/")
_STOREFRONT_API = re.compile(r"/(?:shop/api/|s/[^/]+/api/)")


def sessionless(path: str) -> bool:
    """Whether this path is served without a session (see the module's docstring)."""
    return path.startswith(SESSIONLESS_PREFIXES)


def userless(path: str) -> bool:
    """Whether this path never acts as a signed-in user: the sessionless ones and the storefront's JSON API."""
    return path.startswith(SESSIONLESS_PREFIXES) or _STOREFRONT_API.match(path) is not None


class _NoCookieSession(SecureCookieSession):
    """A sessionless request's session: starts empty whatever cookie came, and is never saved."""


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except on sessionless paths: no cookie is verified (an HMAC and a JSON
    decode per request) and none is set (FAB's language selector writes one on first use)."""

    def open_session(self, app, request):
        if sessionless(request.path):
            return _NoCookieSession()
        return super().open_session(app, request)

    def save_session(self, app, session, response) -> None:
        if isinstance(session, _NoCookieSession):
            return
        super().save_session(app, session, response)

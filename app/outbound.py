"""The one outbound HTTP client: every call Kameng makes to another server (Open API callbacks, suppliers, payment
channels, the identity provider, the payout bank, alerts) goes through `session()`.

The fence (DESIGN.md "Security and trust", STACK_NOTES "Outbound fence"):
- http and https only; no proxies or netrc from the environment (`trust_env = False`);
- the host name is resolved once (`resolve`); if ANY of its addresses is not a global unicast address the call is
  refused with `DestinationRefused`, otherwise the socket connects to one of exactly those addresses (pinned: a
  second lookup that could answer 127.0.0.1 never happens). TLS SNI and certificate checks still use the name;
- never a redirect (a 3xx comes back as it is; callers that expect 2xx treat it as a failure);
- the answer is read at most `max_bytes` (1 MiB by default) within a total `deadline`, besides the usual
  (connect, read) timeouts.

`OUTBOUND_ALLOW_PRIVATE` (config) lifts only the address check, for `make run` and tests whose simulators listen
on 127.0.0.1; the other caps stay. Outside an app context the environment's value applies (default: refused).

Our own refusals derive from `OutboundError`, deliberately not an OSError: urllib3 would retry an OSError, and a
refusal must fail at once. Callers catch `FAILURES` (ours plus requests' transport errors) and record
`describe(exc)` as the readable reason.
"""
from __future__ import annotations

import functools
import ipaddress
import socket
import threading
import time
from typing import Any

import requests
from flask import current_app, has_app_context
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import connection as urllib3_connection

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 15.0
DEFAULT_DEADLINE_SECONDS = 30.0
CHUNK_BYTES = 64 * 1024

# Read as global by Python yet able to reach inside: NAT64 (64:ff9b::7f00:1 is 127.0.0.1 behind a NAT64
# gateway), 6to4 (2002:7f00:1::), shared address space (100.100.100.200 is a cloud metadata service).
EXTRA_REFUSED = tuple((ipaddress.ip_network(net), name) for net, name in (
    ("100.64.0.0/10", "shared address (100.64.0.0/10, e.g. cloud metadata)"), ("64:ff9b::/96", "NAT64 address"),
    ("64:ff9b:1::/48", "NAT64 address"), ("2002::/16", "6to4 address"), ("::/96", "IPv4-compatible address")))


class OutboundError(Exception):
    """An outbound call stopped by the fence or its caps (not an OSError, so urllib3 never retries it)."""


class DestinationRefused(OutboundError):
    """The destination resolves to an address we do not call (loopback, private, metadata, ...)."""


class ResponseTooLarge(OutboundError):
    """The answer went past the size cap; what was read is dropped."""


class DeadlineExceeded(OutboundError):
    """The whole call (connect, send, read the answer) took longer than its deadline."""


# What a caller catches around an outbound call: the fence's refusals and requests' transport errors.
FAILURES: tuple[type[Exception], ...] = (OutboundError, requests.RequestException)


def describe(exc: BaseException) -> str:
    """A short readable reason for a failed call, fit for an attempt log ("destination refused: loopback ...")."""
    if isinstance(exc, OutboundError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def short_reason(exc: BaseException) -> str:
    """The fence's own reason in full ("destination refused: ..."), or only the transport error's kind
    ("ConnectTimeout"), for messages that should not carry a library's long text."""
    return str(exc) if isinstance(exc, OutboundError) else type(exc).__name__


# --- addresses -----------------------------------------------------------------------------------------------

def resolve(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) for every answer the system resolver gives for host (numeric spellings such as
    2130706433 or 0x7f.1 come back as the address they mean). Tests replace this function only."""
    infos = socket.getaddrinfo(host, port, urllib3_connection.allowed_gai_family(), socket.SOCK_STREAM)
    seen: list[tuple[int, str]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        entry = (family, str(sockaddr[0]))
        if entry not in seen:
            seen.append(entry)
    return seen


def refusal_reason(address: str) -> str | None:
    """Why we do not call this address (e.g. "loopback address"), or None when it is a global unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) says nothing more
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    checks = (("unspecified address", ip.is_unspecified), ("loopback address", ip.is_loopback),
              ("link-local address", ip.is_link_local), ("multicast address", ip.is_multicast),
              ("private address", ip.is_private))
    for reason, hit in checks:
        if hit:
            return reason
    for network, name in EXTRA_REFUSED:
        if ip.version == network.version and ip in network:
            return name
    if ip.is_reserved or not ip.is_global:
        return "non-global address"
    return None


class _Fence:
    """The address policy one session connects under."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def addresses(self, host: str, port: int) -> list[tuple[int, str]]:
        """The addresses to connect to: all of host's, once, each checked; DestinationRefused if any fails."""
        answers = resolve(host, port)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
        if not self.allow_private:
            for _family, address in answers:
                reason = refusal_reason(address)
                if reason:
                    shown = address if address == host.strip("[]") else f"{address} for {host}"
                    raise DestinationRefused(f"destination refused: {reason} {shown}")
        return answers


def _pinned_connection(conn: HTTPConnection, fence: _Fence):
    """What HTTPConnection._new_conn does, except that the socket connects to the checked addresses."""
    try:
        answers = fence.addresses(conn._dns_host.strip("[]"), conn.port)
        error: OSError | None = None
        for _family, address in answers:
            try:
                sock = urllib3_connection.create_connection(
                    (address, conn.port), conn.timeout, source_address=conn.source_address,
                    socket_options=conn.socket_options)
                return sock
            except OSError as exc:  # the next checked address, as create_connection itself would
                error = exc
        raise error or OSError(f"no address to connect to for {conn.host}")
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})") \
            from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


class _Call:
    """One outbound call's deadline and the watchdogs that cut its connection when it passes."""

    def __init__(self, deadline_at: float):
        self.deadline_at = deadline_at
        self.expired = False
        self.timers: list[threading.Timer] = []

    def watch(self, conn: HTTPConnection) -> None:
        timer = threading.Timer(max(0.0, self.deadline_at - time.monotonic()), self._cut, (conn,))
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def _cut(self, conn: HTTPConnection) -> None:
        self.expired = True
        sock = conn.sock
        if sock is not None:
            try:  # the plain socket's shutdown (also under TLS): the blocked read returns, the call fails
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        for timer in self.timers:
            timer.cancel()


_current = threading.local()  # the _Call this thread is making (calls are synchronous: one at a time)


class _FencedConnectionMixin:
    """Connects through the fence; a watchdog cuts the connection at the call's deadline, so a server that
    trickles its headers (each byte within the read timeout) cannot hold the call past it."""

    _fence: _Fence

    def _new_conn(self) -> socket.socket:
        return _pinned_connection(self, self._fence)  # type: ignore[arg-type]

    def request(self, *args: Any, **kwargs: Any) -> None:
        call = getattr(_current, "call", None)
        if call is not None:
            call.watch(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _FencedHTTPConnection(_FencedConnectionMixin, HTTPConnection):
    def __init__(self, *args: Any, fence: _Fence, **kwargs: Any):
        self._fence = fence
        super().__init__(*args, **kwargs)


class _FencedHTTPSConnection(_FencedConnectionMixin, HTTPSConnection):
    # self.host (the name, not the pinned address) still drives SNI and certificate verification
    def __init__(self, *args: Any, fence: _Fence, **kwargs: Any):
        self._fence = fence
        super().__init__(*args, **kwargs)


class _FencedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _FencedHTTPConnection


class _FencedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _FencedHTTPSConnection


class _FencedAdapter(HTTPAdapter):
    """requests' adapter whose pools make fenced connections (the fence rides along as a connection keyword)."""

    def __init__(self, fence: _Fence):
        self._fence = fence
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": functools.partial(_FencedHTTPPool, fence=self._fence),
            "https": functools.partial(_FencedHTTPSPool, fence=self._fence),
        }

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # a proxy would connect for us, around the fence
        raise DestinationRefused("destination refused: proxies are not used for outbound calls")


# --- the session ---------------------------------------------------------------------------------------------

class OutboundSession(requests.Session):
    """A requests session behind the fence: no redirects, capped size, a total deadline (see the module doc)."""

    def __init__(self, *, allow_private: bool, max_bytes: int, timeout: tuple[float, float], deadline: float):
        super().__init__()
        self.trust_env = False
        self.max_redirects = 0
        self.max_bytes = max_bytes
        self.default_timeout = timeout
        self.deadline = deadline
        self.adapters.clear()  # only http and https, both fenced
        adapter = _FencedAdapter(_Fence(allow_private))
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def get_redirect_target(self, resp: requests.Response) -> None:
        """Never a redirect: requests would otherwise read a 3xx's body (uncapped) to prepare the next request."""
        return None

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send once (no redirects, no proxies), then read the whole answer under the size cap and deadline."""
        started = time.monotonic()
        from app.ops.logs import correlation_id

        correlation = correlation_id()  # the request or job this call is made for: the receiver can quote it
        if correlation:
            request.headers.setdefault("X-Request-ID", correlation)
        kwargs["allow_redirects"] = False
        kwargs["stream"] = True
        kwargs["proxies"] = {}
        # Each wait is capped by the deadline too, so a server that never answers fails within it.
        timeout = kwargs.get("timeout") or self.default_timeout
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        kwargs["timeout"] = (min(connect or self.deadline, self.deadline), min(read or self.deadline, self.deadline))
        call = _current.call = _Call(started + self.deadline)
        try:
            response = super().send(request, **kwargs)
            try:
                self._read_capped(response, call.deadline_at)
                if call.expired:  # cut mid-headers, http.client may have taken the cut for their end
                    raise DeadlineExceeded(f"deadline exceeded: no complete answer within {self.deadline:g} s "
                                           f"from {request.url}")
            except BaseException:
                response.close()
                raise
        except requests.RequestException as exc:
            if call.expired or time.monotonic() > call.deadline_at:
                raise DeadlineExceeded(f"deadline exceeded: no complete answer within {self.deadline:g} s from "
                                       f"{request.url}") from exc
            raise
        finally:
            call.finish()
            _current.call = None
        return response

    def _read_capped(self, response: requests.Response, deadline_at: float) -> None:
        """Read the answer into response.content: read1 returns whatever has arrived, so a server that trickles
        bytes meets the deadline check between reads (each read waits at most the read timeout)."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ResponseTooLarge(f"response too large: {declared} bytes (at most {self.max_bytes}) from "
                                   f"{response.url}")
        body = bytearray()
        raw = response.raw
        try:
            while True:
                chunk = raw.read1(CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                body += chunk
                if len(body) > self.max_bytes:
                    raise ResponseTooLarge(f"response too large: more than {self.max_bytes} bytes from "
                                           f"{response.url}")
                if time.monotonic() > deadline_at:
                    raise DeadlineExceeded(f"deadline exceeded: no complete answer within {self.deadline:g} s "
                                           f"from {response.url}")
        except (ProtocolError, DecodeError, ReadTimeoutError, SSLError) as exc:
            # what requests' iter_content would have raised, as its own exceptions
            if isinstance(exc, ReadTimeoutError):
                raise requests.ReadTimeout(exc, request=response.request) from exc
            if isinstance(exc, DecodeError):
                raise requests.exceptions.ContentDecodingError(exc) from exc
            if isinstance(exc, SSLError):
                raise requests.exceptions.SSLError(exc) from exc
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        raw.release_conn()
        response._content = bytes(body)
        response._content_consumed = True


def _setting(name: str, default: Any) -> Any:
    """The app's setting; outside an app context (a simulator, a script) the environment's, as config.py read it."""
    from config import Config

    value = current_app.config.get(name) if has_app_context() else getattr(Config, name, None)
    return default if value is None else value


def session(*, allow_private: bool | None = None, max_bytes: int | None = None,
            timeout: float | tuple[float, float] | None = None, deadline: float | None = None) -> OutboundSession:
    """The outbound client. Unset arguments come from the app's config (OUTBOUND_ALLOW_PRIVATE,
    OUTBOUND_MAX_BYTES, OUTBOUND_CONNECT_TIMEOUT / OUTBOUND_READ_TIMEOUT, OUTBOUND_DEADLINE_SECONDS), or from the
    environment outside an app context. A per-call `timeout=` still applies, within the deadline."""
    if allow_private is None:
        allow_private = bool(_setting("OUTBOUND_ALLOW_PRIVATE", False))
    if timeout is None:
        timeout = (float(_setting("OUTBOUND_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)),
                   float(_setting("OUTBOUND_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)))
    elif not isinstance(timeout, tuple):
        timeout = (float(timeout), float(timeout))
    return OutboundSession(
        allow_private=allow_private,
        max_bytes=int(max_bytes if max_bytes is not None else _setting("OUTBOUND_MAX_BYTES", DEFAULT_MAX_BYTES)),
        timeout=timeout,
        deadline=float(deadline if deadline is not None
                       else _setting("OUTBOUND_DEADLINE_SECONDS", DEFAULT_DEADLINE_SECONDS)))


def post(url: str, **kwargs: Any) -> requests.Response:
    """One POST through a fresh fenced session (see `session` for the settings; `timeout=` per call)."""
    with session() as s:
        return s.post(url, **kwargs)


def request(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request through a fresh fenced session."""
    with session() as s:
        return s.request(method, url, **kwargs)


__all__ = ["FAILURES", "DeadlineExceeded", "DestinationRefused", "OutboundError", "OutboundSession",
           "ResponseTooLarge", "describe", "short_reason", "post", "refusal_reason", "request", "resolve", "session"]

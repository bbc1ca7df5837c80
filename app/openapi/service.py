"""Open API rules: request authentication, idempotent order creation, order representation (API keys:
app.openapi.keys)."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.exc import IntegrityError

from app import cache, crypto
from app.agents.models import Agent
from app.agents.service import AgentFacts, agent_facts
from app.catalog import cards
from app.catalog.facts import product_facts
from app.clock import utcnow
from app.errors import Forbidden, KamengError, NotFound, ValidationError
from app.extensions import db
from app.openapi import signing
from app.openapi.errors import InvalidNotifyUrl, OutTradeNoConflict, Unauthorized
from app.openapi.keys import create_key, key_secret, revoke_key  # noqa: F401  (re-exported for callers)
from app.openapi.models import ApiKey, ApiNonce
from app.orders import service as orders
from app.orders.models import Order
from app.rows import run

OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_\-.:]{1,64}")  # always fullmatch: "$" would admit a trailing newline
NONCE = re.compile(r"[\x21-\x7e]{16,64}")  # printable ASCII, no spaces
TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() admits '²', which int() refuses
ORDER_NO = re.compile(r"[A-Za-z0-9]{1,32}")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
log = logging.getLogger(__name__)


# --- authentication -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CallerKey:
    """An API key as authentication needs it (app.cache keeps it: the secret is decrypted once per process)."""
    id: int
    agent_id: int
    app_key: str
    active: bool
    secret: str
    networks: tuple  # the IP allow-list as ip_network objects; empty = any address
    scope: str = "agent"  # "agent", or "risk_feed" for a partner platform's key (app.risk.feed)
    partner_id: int | None = None


def _caller_key(app_key: str) -> CallerKey | None:
    return cache.fetch("api_key", app_key, lambda: _load_caller_key(app_key))


def _load_caller_key(app_key: str) -> CallerKey | None:
    row = db.session.execute(select(ApiKey.id, ApiKey.agent_id, ApiKey.app_key, ApiKey.active, ApiKey.secret_enc,
                                    ApiKey.ip_allowlist, ApiKey.scope, ApiKey.partner_id)
                             .where(ApiKey.app_key == app_key)).first()
    if row is None:
        return None
    networks = tuple(ipaddress.ip_network(net) for net in row.ip_allowlist.split(",")) if row.ip_allowlist else ()
    return CallerKey(row.id, row.agent_id, row.app_key, row.active, crypto.decrypt(row.secret_enc), networks,
                     row.scope, row.partner_id)


def authenticate(method: str, path: str, headers, body: bytes, remote_addr: str | None,
                 raw_path: str | None = None) -> CallerKey:
    """Verify a signed request; any failure is Unauthorized (401). Checks are ordered so that an unsigned
    request cannot burn a legitimate caller's nonce.

    PATH is accepted as the client sent it on the request line (`raw_path`, percent-encoded) or decoded (`path`):
    clients sign one or the other, and both name the same resource."""
    app_key = headers.get("X-App-Key", "")
    timestamp = headers.get("X-Timestamp", "")
    nonce = headers.get("X-Nonce", "")
    signature = headers.get("X-Signature", "")
    if not (app_key and timestamp and nonce and signature):
        raise Unauthorized("missing X-App-Key, X-Timestamp, X-Nonce or X-Signature")
    if not TIMESTAMP.fullmatch(timestamp) or abs(time.time() - int(timestamp)) > signing.MAX_SKEW_SECONDS:
        raise Unauthorized("X-Timestamp is not within 300 seconds of the server's clock")
    if not NONCE.fullmatch(nonce):
        raise Unauthorized("X-Nonce must be 16 to 64 printable characters")
    paths = [path] + ([raw_path] if raw_path and raw_path != path else [])
    # The key as this process last knew it (no round trip); confirmed against the version the nonce's statement
    # reads, and checked again from a fresh read when that differs (a key revoked meanwhile is refused).
    key, seen = cache.peek("api_key", app_key[:40])
    if key is cache.MISSING:
        key, seen = _caller_key(app_key[:40]), cache.unit_version()
    _check_key(key, remote_addr, paths, method, timestamp, nonce, body, signature)
    if not _remember_nonce(key.app_key, nonce):
        raise Unauthorized("nonce already used")
    if cache.unit_version() != seen:
        key = _caller_key(app_key[:40])
        _check_key(key, remote_addr, paths, method, timestamp, nonce, body, signature)
    _touch(key)
    return key


def _check_key(key: CallerKey | None, remote_addr: str | None, paths: list[str], method: str, timestamp: str,
               nonce: str, body: bytes, signature: str) -> None:
    if key is None or not key.active:
        raise Unauthorized("unknown or revoked app key")
    if not _address_allowed(key, remote_addr):
        raise Unauthorized("caller address is not in this key's IP allow-list")
    if not any(signing.signature_matches(signing.sign(key.secret, method, p, timestamp, nonce, body), signature)
               for p in paths):
        raise Unauthorized("bad signature")


def _address_allowed(key: CallerKey, remote_addr: str | None) -> bool:
    if not key.networks:
        return True
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return False
    return any(address in network for network in key.networks)


def _remember_nonce(app_key: str, nonce: str) -> bool:
    """True the first time a nonce is seen for a key inside the window.

    The database is the one store: a unique (app_key, nonce) row. A nonce kept only in Redis could be replayed
    while Redis is down (a fallback store has never seen it) or after Redis lost its data; one INSERT per signed
    call is cheap next to the call itself, and the nonce-purge job keeps the table to the last 10 minutes.
    On PostgreSQL the same statement reads the cache version the rest of the request reads under (app.cache)."""
    if db.session.get_bind().dialect.name == "postgresql":
        # One autocommitted statement beside the request's transaction (which it leaves alone: nothing loaded in
        # it is expired by a commit).
        from app.extensions import append_engine

        with append_engine().connect() as conn:
            fresh, version = run(_REMEMBER_NONCE, {"app_key": app_key, "nonce": nonce, "now": utcnow()}, conn).one()
        cache.observe(version)
        return bool(fresh)
    try:
        with db.session.begin_nested():
            db.session.add(ApiNonce(app_key=app_key, nonce=nonce))
        db.session.commit()
        return True
    except IntegrityError:
        db.session.rollback()
        return False


_REMEMBER_NONCE = text("WITH n AS (INSERT INTO api_nonce (app_key, nonce, created_at) VALUES (:app_key, :nonce, :now) "
                       "ON CONFLICT (app_key, nonce) DO NOTHING RETURNING id) "
                       "SELECT EXISTS (SELECT 1 FROM n), (SELECT version FROM cache_version WHERE id = 1)")


def purge_nonces() -> int:
    """Scheduled: nonces older than the window can no longer be replayed (the timestamp check refuses them)."""
    cutoff = utcnow() - timedelta(seconds=2 * signing.MAX_SKEW_SECONDS)
    result = db.session.execute(delete(ApiNonce).where(ApiNonce.created_at < cutoff))
    db.session.commit()
    return result.rowcount or 0


def _touch(key: CallerKey) -> None:
    """A key's last use, written at most once a minute per process (the screen shows it to the minute)."""
    touched = current_app.extensions.setdefault("kameng_keys_touched", {})  # key id -> monotonic time
    now = time.monotonic()
    if now - touched.get(key.id, -1e9) > 60:
        touched[key.id] = now
        db.session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=utcnow()))
        db.session.commit()


# --- orders -------------------------------------------------------------------------------------------------

def _require_json_object(payload) -> dict:
    if not isinstance(payload, dict):
        raise ValidationError("request body must be a JSON object")
    return payload


def _clean_order_request(payload) -> dict:
    data = _require_json_object(payload)
    unknown = set(data) - {"out_trade_no", "product_id", "quantity", "account", "notify_url"}
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(sorted(unknown))}")
    out_trade_no = data.get("out_trade_no")
    if not isinstance(out_trade_no, str) or not OUT_TRADE_NO.fullmatch(out_trade_no):
        raise ValidationError("out_trade_no is required: 1-64 characters of A-Z a-z 0-9 _ - . :")
    product_id = data.get("product_id")
    if isinstance(product_id, bool) or not isinstance(product_id, int):
        raise ValidationError("product_id must be an integer")
    quantity = data.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValidationError("quantity must be an integer")
    account = data.get("account")
    if account is not None and (not isinstance(account, str) or not 1 <= len(account.strip()) <= 128
                                or CONTROL_CHARS.search(account)):
        raise ValidationError("account must be a string of 1-128 characters without control characters")
    notify_url = data.get("notify_url")
    if notify_url is not None:
        notify_url = validate_notify_url(notify_url)
    return {"out_trade_no": out_trade_no, "product_id": product_id, "quantity": quantity,
            "account": account.strip() if account else None, "notify_url": notify_url}


def validate_notify_url(url) -> str:
    """The shape only: http(s), a host, at most 512 characters. Where it points is checked by the outbound fence
    when the callback connects (app/outbound.py), since a name can point elsewhere by then."""
    if not isinstance(url, str) or len(url) > 512 or CONTROL_CHARS.search(url):
        raise InvalidNotifyUrl("notify_url must be an http(s) URL of at most 512 characters")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number or out of range)
    except ValueError:  # e.g. "http://[::1" or "http://host:99999/"
        raise InvalidNotifyUrl("notify_url must be an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise InvalidNotifyUrl("notify_url must be an http(s) URL with a host")
    return url


def request_hash(cleaned: dict) -> str:
    return hashlib.sha256(json.dumps(cleaned, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_order(key: CallerKey, payload, ip: str | None = None) -> tuple[dict, bool]:
    """Place a wallet-paid order, idempotent per (agent, out_trade_no). Returns (its order_json, created).

    Risk control (event openapi_order) decides before anything is written: a block is 403 risk_blocked /
    risk_limit; a review creates the order paid and held (status reviewing, no callback until its final status).
    A replay of a known out_trade_no is answered from the stored order without a new decision. A new order is
    rendered inside its transaction, just before the commit (nothing to reload afterwards)."""
    cleaned = _clean_order_request(payload)
    digest = request_hash(cleaned)
    existing = _existing(key.agent_id, cleaned["out_trade_no"], digest)
    if existing is not None:
        return order_json(existing), False
    product = product_facts(cleaned["product_id"]) if 0 < cleaned["product_id"] < 2 ** 31 else None
    if product is not None and product.kind == "direct" and not cleaned["account"]:
        raise ValidationError("account is required for direct top-up products")
    rendered: list[dict] = []
    try:
        orders.place_wallet_order(key.agent_id, cleaned["product_id"], cleaned["quantity"],
                                  out_trade_no=cleaned["out_trade_no"], account=cleaned["account"],
                                  notify_url=cleaned["notify_url"], request_hash=digest, api_key_id=key.id,
                                  risk=orders.RiskContext(event="openapi_order", ip=ip),
                                  before_commit=lambda order: rendered.append(order_json(order)))
    except IntegrityError:
        # The same out_trade_no committed concurrently: answer as a replay (or a conflict if it differs).
        existing = _existing(key.agent_id, cleaned["out_trade_no"], digest)
        if existing is None:
            raise
        return order_json(existing), False
    return rendered[0], True


_EXISTING = (select(Order.__table__.c.id, Order.__table__.c.request_hash)
             .where(Order.__table__.c.agent_id == bindparam("agent_id"),
                    Order.__table__.c.out_trade_no == bindparam("out_trade_no")))


def _existing(agent_id: int, out_trade_no: str, digest: str) -> Order | None:
    """The order already placed under this out_trade_no, if any (a plain row probe first: usually there is none)."""
    found = run(_EXISTING, {"agent_id": agent_id, "out_trade_no": out_trade_no}).first()
    if found is None:
        return None
    if found.request_hash != digest:
        raise OutTradeNoConflict("out_trade_no was already used with a different request body")
    return db.session.get(Order, found.id)


def find_order(agent_id: int, order_no: str | None = None, out_trade_no: str | None = None) -> Order:
    """Only the caller's own orders; another agent's order is answered exactly like a missing one."""
    query = select(Order).where(Order.agent_id == agent_id)
    if order_no is not None:
        valid = ORDER_NO.fullmatch(order_no)
        query = query.where(Order.order_no == order_no)
    elif out_trade_no:
        valid = OUT_TRADE_NO.fullmatch(out_trade_no)
        query = query.where(Order.out_trade_no == out_trade_no)
    else:
        raise ValidationError("give order_no in the path or out_trade_no in the query string")
    # A value no order can have (NUL bytes, overlong, odd characters) is simply not found; never sent to SQL.
    order = db.session.scalar(query) if valid else None
    if order is None:
        raise NotFound("order not found")
    return order


def order_json(order: Order, with_secrets: bool = True) -> dict:
    product = product_facts(order.product_id)
    data = {
        "order_no": order.order_no, "out_trade_no": order.out_trade_no, "product_id": order.product_id,
        "product_name": product.name, "kind": product.kind, "quantity": order.quantity,
        "unit_price": order.unit_price, "amount": order.amount, "currency": "CNY", "status": order.status,
        "account": order.account, "created_at": _iso(order.created_at), "paid_at": _iso(order.paid_at),
        "delivered_at": _iso(order.delivered_at),
    }
    if product.kind == "direct":
        data["upstream_status"] = order.upstream_status
    if with_secrets and product.kind in ("card", "direct"):
        secrets = cards.reveal(order.id) if order.status in ("delivered", "disputed") else []
        if product.kind == "card" or secrets:  # a direct top-up has secrets only when docking a card product
            data["card_secrets"] = secrets
    return data


def _iso(value) -> str | None:
    return value.replace(microsecond=0).isoformat() + "Z" if value else None


def products_for(agent: Agent) -> list[dict]:
    from app.portal.service import offers_for

    return [{"id": o.id, "name": o.name, "category": o.category, "kind": o.kind, "face_price": o.face_price,
             "price": o.my_price, "in_stock": o.in_stock, "max_per_order": o.max_per_order}
            for o in offers_for(agent)]


def caller_agent(key: CallerKey) -> AgentFacts:
    if key.scope != "agent" or key.agent_id is None:
        raise Forbidden("this key may only pull the risk feed (partner key)", code="forbidden_scope")
    agent = agent_facts(key.agent_id)
    if agent is None or not agent.active:
        raise Forbidden("agent disabled")
    return agent


__all__ = ["KamengError"]

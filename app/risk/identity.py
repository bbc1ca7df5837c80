"""Identifiers risk control sees: normalised (phones as E.164), kept only as keyed hashes (HMAC-SHA256 with
RISK_HASH_KEY) and shown masked (app.crypto.mask: at most a quarter of the characters)."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress

from flask import current_app

from app.crypto import mask, normalize_contact


def _key() -> bytes:
    configured = current_app.config.get("RISK_HASH_KEY")
    if configured:
        return configured.encode()
    # Derived, not stored: a dump of the database does not carry it.
    return hmac.new(current_app.config["CARD_SECRET_KEY"].encode(), b"kameng-risk-hash", hashlib.sha256).digest()


def normalise(kind: str, value: str) -> str:
    value = (value or "").strip()
    if kind in ("phone", "contact"):
        return normalize_contact(value)
    if kind == "id_number":
        return value.upper().replace(" ", "")
    if kind in ("ip", "cidr"):
        return str(ipaddress.ip_network(value, strict=False)) if kind == "cidr" else str(ipaddress.ip_address(value))
    if kind == "agent":
        return value.lower()
    return value


def digest(kind: str, value: str) -> str:
    """The keyed hash of a normalised identifier; the kind is part of it (a phone and a contact of the same text
    hash alike on purpose: a contact is usually a phone)."""
    return digest_normalised(_key(), kind, normalise(kind, value))


def digest_normalised(key: bytes, kind: str, normalised: str) -> str:
    """HMAC-SHA256(key, family:normalised) in hex: under RISK_HASH_KEY for our own lists, under a key partners
    share for the shared feed (app.risk.feed), so two platforms hashing one phone get one value."""
    family = "contact" if kind in ("phone", "contact") else kind
    return hmac.new(key, f"{family}:{normalised}".encode(), hashlib.sha256).hexdigest()


__all__ = ["digest", "digest_normalised", "mask", "normalise"]  # mask: app.crypto's, the one masking function

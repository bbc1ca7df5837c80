"""Encryption at rest for card secrets (and later API secrets), keyed from CARD_SECRET_KEY."""
from __future__ import annotations

import base64
import hashlib
import hmac
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app


@lru_cache(maxsize=8)
def _fernet(key_material: str) -> Fernet:
    key = hashlib.sha256(("enc:" + key_material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


@lru_cache(maxsize=8)
def _hash_key(key_material: str) -> bytes:
    return hashlib.sha256(("hash:" + key_material).encode()).digest()


def _key_material() -> str:
    return current_app.config["CARD_SECRET_KEY"]


def encrypt(plaintext: str) -> str:
    return _fernet(_key_material()).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet(_key_material()).decrypt(token.encode()).decode()
    except InvalidToken as exc:  # wrong key or tampered row: never show garbage
        raise ValueError("cannot decrypt: wrong CARD_SECRET_KEY or corrupted value") from exc


def keyed_hash(*parts: object) -> str:
    """A keyed hash for dedupe lookups that does not reveal the value."""
    message = "\x1f".join(str(p) for p in parts).encode()
    return hmac.new(_hash_key(_key_material()), message, hashlib.sha256).hexdigest()


def mask(secret: str) -> str:
    """Show staff enough to tell secrets apart, never enough to use one."""
    s = secret.strip()
    if len(s) <= 4:
        return "*" * len(s)
    if len(s) <= 10:
        return s[:2] + "*" * (len(s) - 4) + s[-2:]
    return s[:4] + "*" * min(len(s) - 8, 12) + s[-4:]

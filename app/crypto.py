"""Encryption at rest for card secrets, API secrets and personal data (phones, contacts, top-up accounts), keyed
from CARD_SECRET_KEY; the keyed hash (blind index) lookups use; and the one masking function every screen uses."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

# mask(): beyond these, longer values show no more characters and no more stars (a 256-character card secret fits
# a 64-character column and is still told apart from its neighbours).
MASK_MAX_SHOWN = 8
MASK_MAX_STARS = 16


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


def encrypter() -> Callable[[str], str]:
    """encrypt() bound to the current app's key, for a thread that has no app context (bulk writers)."""
    fernet = _fernet(_key_material())
    return lambda plaintext: fernet.encrypt(plaintext.encode()).decode()


def keyed_hash(*parts: object) -> str:
    """A keyed hash for dedupe lookups that does not reveal the value."""
    message = "\x1f".join(str(p) for p in parts).encode()
    return hmac.new(_hash_key(_key_material()), message, hashlib.sha256).hexdigest()


# --- order passwords (the storefront buyer's 查询密码) ------------------------------------------------------------

_ORDER_PASSWORD = "hmac-sha256"


def hash_order_password(password: str) -> str:
    """An order password as stored: HMAC-SHA256 under CARD_SECRET_KEY over a random salt and the password.

    Not a slow hash on purpose (werkzeug's scrypt cost 68 ms of CPU per checkout and per lookup, capping the
    storefront near 30 a second on two cores): online guessing is bounded by the order number's lookup budget, and a
    database dump alone cannot be guessed against without the key; whoever also holds the key decrypts the card
    secrets the password protects directly, so a slow hash would protect nothing more."""
    salt = base64.urlsafe_b64encode(os.urandom(12)).decode()
    return f"{_ORDER_PASSWORD}${salt}${_order_password_mac(salt, password)}"


def check_order_password(stored: str, password: str) -> bool:
    """Constant-time check of an order password (older rows hold werkzeug hashes: checked as such)."""
    if stored.startswith(_ORDER_PASSWORD + "$"):
        _, salt, mac = stored.split("$", 2)
        return hmac.compare_digest(mac, _order_password_mac(salt, password))
    from werkzeug.security import check_password_hash

    return check_password_hash(stored, password)


def _order_password_mac(salt: str, password: str) -> str:
    message = f"order-password\x1f{salt}\x1f{password}".encode()
    return hmac.new(_hash_key(_key_material()), message, hashlib.sha256).hexdigest()


# --- personal data: normalised spelling, blind index, encrypted column ------------------------------------------

def normalize_contact(contact: str) -> str:
    """One spelling per person: a Chinese (or +country) phone number as E.164 ('138 0013 8000', '+86-138-0013-8000'
    -> '+8613800138000'), anything else (QQ, e-mail, game account) lower-cased without spaces."""
    import phonenumbers

    text = (contact or "").strip()
    try:
        number = phonenumbers.parse(text, "CN")
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    return "".join(text.split()).lower()


def pii_hash(value: str | None) -> str | None:
    """The blind index of a phone number, contact or top-up account: the keyed hash of its normalised spelling, so
    '138 0013 8000' and '+8613800138000' find the same rows. One family for all three on purpose: support types a
    number without saying whether it was the buyer's contact or the account topped up. None for no value."""
    if value is None or not str(value).strip():
        return None
    return keyed_hash("pii", normalize_contact(str(value)))


class EncryptedText(TypeDecorator):
    """A text column holding a Fernet token (app.crypto.encrypt) while Python reads and writes the plaintext.

    The ciphertext differs on every write, so equality, LIKE and IN on the column can never match: they raise
    instead of silently finding nothing. Look rows up by the column's blind index (pii_hash) instead.
    """
    impl = Text
    cache_ok = True

    class comparator_factory(Text.Comparator):  # noqa: N801 (SQLAlchemy's name)
        def operate(self, op, *other, **kwargs):
            from sqlalchemy.sql import operators

            if op in (operators.is_, operators.is_not, operators.isnot, operators.asc_op, operators.desc_op,
                      operators.nulls_first_op, operators.nulls_last_op):
                return super().operate(op, *other, **kwargs)
            raise TypeError(f"an encrypted column cannot be compared ({op.__name__}): filter by its blind index")

    def process_bind_param(self, value, dialect):
        return None if value is None else encrypt(str(value))

    def process_result_value(self, value, dialect):
        return None if value is None else decrypt(value)


# --- masking ----------------------------------------------------------------------------------------------------

def mask(value: object) -> str:
    """The one masked form of a secret or personal value: at most a quarter of its characters shown (floor(len/4),
    the first half of them at the start and the rest at the end), the others as stars; three characters or fewer
    are all stars. Long values show at most MASK_MAX_SHOWN characters and MASK_MAX_STARS stars.
    13800138000 -> 1*********0, 张三丰 -> ***."""
    s = "" if value is None else str(value).strip()
    n = len(s)
    shown = min(n // 4, MASK_MAX_SHOWN)
    head, tail = (shown + 1) // 2, shown // 2
    stars = min(n - shown, MASK_MAX_STARS)
    return s[:head] + "*" * stars + (s[n - tail:] if tail else "")

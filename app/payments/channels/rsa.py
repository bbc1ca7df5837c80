"""SHA256withRSA (PKCS#1 v1.5), base64: the signature Alipay (RSA2), WeChat Pay v3 and UnionPay use.

Parsing a PEM key (and checking an RSA private key) costs tens of milliseconds: keys are parsed once per PEM text
and kept (a handful per process: one per channel setting)."""
from __future__ import annotations

import base64
import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


@functools.lru_cache(maxsize=32)
def private_key(private_key_pem: str):
    return serialization.load_pem_private_key(private_key_pem.encode(), password=None)


@functools.lru_cache(maxsize=64)
def public_key(public_key_pem: str):
    return serialization.load_pem_public_key(public_key_pem.encode())


def sign(private_key_pem: str, message: str | bytes) -> str:
    data = message.encode() if isinstance(message, str) else message
    return base64.b64encode(private_key(private_key_pem).sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(public_key_pem: str, message: str | bytes, signature: str) -> bool:
    """False for a bad signature, a malformed one, or an unusable key: never an exception."""
    data = message.encode() if isinstance(message, str) else message
    try:
        key = public_key(public_key_pem)
        key.verify(base64.b64decode(signature, validate=True), data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError, AttributeError):
        return False

"""The Open API signature: lowercase hex HMAC-SHA256(secret, METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nSHA256HEX(BODY)).

Used to verify requests, to sign callbacks, and by app/openapi/client.py, so all three agree by construction.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

MAX_SKEW_SECONDS = 300
NONCE_MIN, NONCE_MAX = 16, 64


def string_to_sign(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    return "\n".join([method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest()])


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = string_to_sign(method, path, timestamp, nonce, body).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(app_key: str, secret: str, method: str, path: str, body: bytes = b"",
                   now: int | None = None, nonce: str | None = None) -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    nonce = nonce or secrets.token_hex(16)
    return {"X-App-Key": app_key, "X-Timestamp": timestamp, "X-Nonce": nonce,
            "X-Signature": sign(secret, method, path, timestamp, nonce, body)}


def signature_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), (given or "").lower().encode())

"""Standard Webhooks signatures (https://www.standardwebhooks.com). Pure.

    webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>

The secret is `whsec_` + base64 of the key bytes. During a rotation a destination has several
secrets and the header carries one signature per secret, separated by spaces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


class InvalidSecret(ValueError):
    pass


def secret_key(secret: str) -> bytes:
    """The key bytes of a `whsec_…` secret (the prefix is optional, as in the reference libraries)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        raise InvalidSecret("a webhook secret is whsec_ followed by base64") from exc
    if len(key) < 16:
        raise InvalidSecret("a webhook secret needs at least 16 bytes of key")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(key, message_id, timestamp, body) for key in keys)


def webhook_headers(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, message_id, timestamp, body),
    }

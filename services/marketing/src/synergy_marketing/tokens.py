"""Signed unsubscribe and preference tokens, and the links built from them. Pure: no I/O.

A token is `base64url(payload) "." base64url(HMAC-SHA256(secret, domain + payload))`, the payload being
the compact JSON `[version, purpose, brand_id, user_id, issued_at]`. It names the brand and the user, so
the link alone is the authority (RFC 8058: no cookie, no login) and a token of one user or brand never acts
for another. It stays valid for MARKETING_TOKEN_MAX_AGE (60 days by default: CAN-SPAM wants the link to
work at least 30 days after the mail was sent). During a rotation MARKETING_TOKEN_SECRET_PREVIOUS is still
accepted, and new tokens are signed with MARKETING_TOKEN_SECRET only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as random_secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import orjson
from synergy_common.durations import parse_duration

TOKEN_VERSION = 1
DEFAULT_MAX_AGE_SECONDS = 60 * 86400
# Tokens are never accepted for less than this, whatever the configuration says (CAN-SPAM's 30 days).
MINIMUM_MAX_AGE_SECONDS = 30 * 86400
# A token issued this far in the future (clock skew between replicas) is still accepted.
CLOCK_SKEW_SECONDS = 300
MAX_TOKEN_CHARS = 2048
# How long a rendered preference form may be submitted.
FORM_NONCE_MAX_AGE_SECONDS = 2 * 3600
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"

Purpose = Literal["unsubscribe", "preferences"]
PURPOSES: tuple[Purpose, ...] = ("unsubscribe", "preferences")
_PURPOSE_CODES: dict[Purpose, str] = {"unsubscribe": "u", "preferences": "p"}
_CODE_PURPOSES = {code: purpose for purpose, code in _PURPOSE_CODES.items()}
_DOMAIN = b"synergy.marketing.token\x00"


class TokenSecretMissing(RuntimeError):
    """MARKETING_TOKEN_SECRET is not set, so no link can be signed."""


class TokenRejected(Exception):
    """Why a token was refused; `reason` is one of malformed, bad_signature, expired, wrong_purpose."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TokenClaims:
    purpose: Purpose
    brand_id: str
    user_id: str
    issued_at: int
    key_index: int  # 0: the current secret; 1: the previous one, kept during a rotation


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = re.compile("[A-Za-z0-9_-]+")


def _keys(secrets: Sequence[str]) -> list[hmac.HMAC]:
    """One HMAC-SHA256 object per secret with the key and the domain prefix already absorbed; each MAC
    starts from a copy, so no request pays for the key schedule again."""
    return [hmac.new(secret.encode(), _DOMAIN, hashlib.sha256) for secret in secrets]


def _mac(key: hmac.HMAC, message: bytes) -> bytes:
    """HMAC-SHA256(secret, domain + message)."""
    mac = key.copy()
    mac.update(message)
    return mac.digest()


class TokenSigner:
    """Signs with the first secret; verifies with any of them, in constant time."""

    def __init__(
        self, secrets: Sequence[str | None], max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    ) -> None:
        self._secrets = [secret for secret in secrets if secret]
        if not self._secrets:
            raise TokenSecretMissing(
                "MARKETING_TOKEN_SECRET is not set: unsubscribe and preference links cannot be signed "
                "(`make run` generates one in .local/run/marketing-token.key)"
            )
        self.max_age_seconds = max(float(max_age_seconds), MINIMUM_MAX_AGE_SECONDS)
        self._keys = _keys(self._secrets)

    def sign(
        self, purpose: Purpose, brand_id: str | int, user_id: str, issued_at: float | None = None
    ) -> str:
        if purpose not in _PURPOSE_CODES:
            raise ValueError(f"unknown token purpose {purpose!r}")
        issued = int(time.time() if issued_at is None else issued_at)
        payload = orjson.dumps([TOKEN_VERSION, _PURPOSE_CODES[purpose], str(brand_id), str(user_id), issued])
        return f"{_b64encode(payload)}.{_b64encode(_mac(self._keys[0], payload))}"

    def verify(
        self, token: str | None, accept: Sequence[Purpose] = PURPOSES, now: float | None = None
    ) -> TokenClaims:
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise TokenRejected("malformed", "the link's token is missing or malformed")
        encoded_payload, encoded_mac = token.split(".")
        try:
            payload = _b64decode(encoded_payload)
            given_mac = _b64decode(encoded_mac)
        except (ValueError, binascii.Error) as exc:
            raise TokenRejected("malformed", "the link's token is malformed") from exc
        key_index = -1
        for index, key in enumerate(self._keys):
            # Every secret is tried, so the time taken does not tell which one matched.
            if hmac.compare_digest(_mac(key, payload), given_mac) and key_index < 0:
                key_index = index
        if key_index < 0:
            raise TokenRejected("bad_signature", "the link's token is not valid")
        claims = _parse_payload(payload, key_index)
        current = time.time() if now is None else now
        age = current - claims.issued_at
        if age < -CLOCK_SKEW_SECONDS or age > self.max_age_seconds:
            raise TokenRejected("expired", "the link has expired")
        if claims.purpose not in accept:
            raise TokenRejected("wrong_purpose", "this link cannot be used here")
        return claims

    def form_nonce(self, token: str, now: float | None = None) -> str:
        """A per-render nonce for the preference form, bound to the page's token (a CSRF defence that
        needs no login or cookie: a forged form has no nonce for this token)."""
        random_part = random_secrets.token_urlsafe(12)
        issued = str(int(time.time() if now is None else now))
        mac = _mac(self._keys[0], _form_message(token, random_part, issued))
        return f"{random_part}.{issued}.{_b64encode(mac)}"

    def verify_form_nonce(self, token: str, nonce: str | None, now: float | None = None) -> bool:
        if not nonce or len(nonce) > 200 or nonce.count(".") != 2:
            return False
        random_part, issued, encoded_mac = nonce.split(".")
        if not issued.isdigit():
            return False
        try:
            given_mac = _b64decode(encoded_mac)
        except (ValueError, binascii.Error):
            return False
        message = _form_message(token, random_part, issued)
        matched = False
        for key in self._keys:
            matched = hmac.compare_digest(_mac(key, message), given_mac) or matched
        age = (time.time() if now is None else now) - int(issued)
        return matched and -CLOCK_SKEW_SECONDS <= age <= FORM_NONCE_MAX_AGE_SECONDS


def _form_message(token: str, random_part: str, issued: str) -> bytes:
    return b"form\x00" + token.encode() + b"\x00" + random_part.encode() + b"\x00" + issued.encode()


def _parse_payload(payload: bytes, key_index: int) -> TokenClaims:
    # Only reached with a valid MAC, so a payload that does not parse is ours from another version.
    try:
        decoded: Any = orjson.loads(payload)
        version, code, brand_id, user_id, issued_at = decoded
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise TokenRejected("malformed", "the link's token is malformed") from exc
    valid = (
        version == TOKEN_VERSION
        and code in _CODE_PURPOSES
        and isinstance(brand_id, str)
        and isinstance(user_id, str)
        and isinstance(issued_at, int)
        and not isinstance(issued_at, bool)
    )
    if not valid:
        raise TokenRejected("malformed", "the link's token is malformed")
    return TokenClaims(_CODE_PURPOSES[code], brand_id, user_id, issued_at, key_index)


def signer_from_settings(settings: Any) -> TokenSigner:
    """The signer configured by MARKETING_TOKEN_SECRET, MARKETING_TOKEN_SECRET_PREVIOUS and
    MARKETING_TOKEN_MAX_AGE (a duration such as `60d`)."""
    max_age = getattr(settings, "marketing_token_max_age", None)
    if isinstance(max_age, str):
        max_age_seconds = parse_duration(max_age).total_seconds()
    elif max_age is None:
        max_age_seconds = DEFAULT_MAX_AGE_SECONDS
    else:
        max_age_seconds = float(max_age)
    return TokenSigner(
        [
            getattr(settings, "marketing_token_secret", None),
            getattr(settings, "marketing_token_secret_previous", None),
        ],
        max_age_seconds,
    )


def _public_url(settings: Any) -> str:
    return str(getattr(settings, "marketing_public_url", None) or "http://127.0.0.1:8002").rstrip("/")


def unsubscribe_url(settings: Any, brand_id: str | int, user_id: str, issued_at: float | None = None) -> str:
    """The one-click link (RFC 8058) for the mail's List-Unsubscribe header and its visible footer."""
    token = signer_from_settings(settings).sign("unsubscribe", brand_id, user_id, issued_at)
    return f"{_public_url(settings)}/unsubscribe?token={token}"


def preferences_url(settings: Any, brand_id: str | int, user_id: str, issued_at: float | None = None) -> str:
    """The preference centre's link for the mail's footer."""
    token = signer_from_settings(settings).sign("preferences", brand_id, user_id, issued_at)
    return f"{_public_url(settings)}/preferences?token={token}"


def list_unsubscribe(settings: Any, brand_id: str | int, user_id: str, issued_at: float | None = None) -> str:
    """The List-Unsubscribe header value: the https link, plus a mailto: when MARKETING_UNSUBSCRIBE_MAILTO
    is set. Send it with `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (LIST_UNSUBSCRIBE_POST)."""
    url = unsubscribe_url(settings, brand_id, user_id, issued_at)
    values = [f"<{url}>"]
    mailto = getattr(settings, "marketing_unsubscribe_mailto", None)
    if mailto:
        token = url.rsplit("token=", 1)[1]
        values.append(f"<mailto:{mailto}?subject={quote('unsubscribe ' + token)}>")
    return ", ".join(values)

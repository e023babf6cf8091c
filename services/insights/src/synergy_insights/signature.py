"""Customer.io's webhook signature: pure verification, no I/O.

X-CIO-Signature = lowercase hex HMAC-SHA256(key, "v0:" + X-CIO-Timestamp + ":" + raw body), the
timestamp being unix seconds. Replays are refused by the caller, which remembers accepted signatures
for as long as their timestamp stays inside the tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

SIGNATURE_HEADER = "X-CIO-Signature"
TIMESTAMP_HEADER = "X-CIO-Timestamp"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


def expected_signature(key: str, timestamp: str, body: bytes) -> str:
    message = b"v0:" + timestamp.encode() + b":" + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


class SignatureRejected(Exception):
    """Why a webhook's signature was not accepted; `reason` labels the metric, `field` the header."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class VerifiedSignature:
    signature: str
    signed_at: int
    key_index: int  # 0 = current key, 1 = the previous key kept during a rotation


class SignatureVerifier:
    """Accepts a webhook signed with any configured key whose timestamp is within the tolerance."""

    def __init__(self, keys: Sequence[str | None], tolerance_seconds: float) -> None:
        self._keys = [key for key in keys if key]
        self.tolerance_seconds = tolerance_seconds

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def verify(
        self, timestamp: str | None, signature: str | None, body: bytes, now: float
    ) -> VerifiedSignature:
        if not self._keys:
            raise SignatureRejected(
                "no_signing_key",
                SIGNATURE_HEADER,
                "no webhook signing key is configured; every webhook is refused",
            )
        if not signature:
            raise SignatureRejected("missing_signature", SIGNATURE_HEADER, f"{SIGNATURE_HEADER} is missing")
        if not timestamp:
            raise SignatureRejected("missing_timestamp", TIMESTAMP_HEADER, f"{TIMESTAMP_HEADER} is missing")
        timestamp = timestamp.strip()
        if not _UNIX_SECONDS.fullmatch(timestamp):
            raise SignatureRejected(
                "malformed_timestamp", TIMESTAMP_HEADER, f"{TIMESTAMP_HEADER} must be unix seconds"
            )
        signed_at = int(timestamp)
        if abs(now - signed_at) > self.tolerance_seconds:
            raise SignatureRejected(
                "stale_timestamp",
                TIMESTAMP_HEADER,
                f"{TIMESTAMP_HEADER} is more than {int(self.tolerance_seconds)}s away from the server clock",
            )
        presented = signature.strip().lower()
        if not _HEX_SHA256.fullmatch(presented):
            raise SignatureRejected(
                "bad_signature", SIGNATURE_HEADER, f"{SIGNATURE_HEADER} must be 64 hex characters"
            )
        matched = None
        for index, key in enumerate(self._keys):
            # Every key is compared, so the time taken does not tell which one matched.
            if hmac.compare_digest(expected_signature(key, timestamp, body), presented) and matched is None:
                matched = index
        if matched is None:
            raise SignatureRejected(
                "bad_signature", SIGNATURE_HEADER, "the signature does not match the body and timestamp"
            )
        return VerifiedSignature(signature=presented, signed_at=signed_at, key_index=matched)

"""What an answer from a destination means. Pure: status codes and headers in, a decision out.

Webhook (Standard Webhooks / Svix): 2xx delivered; 410 the endpoint is gone (disable it); 429 and
5xx retried, honouring Retry-After; any other status is the message's fault (dead letter).
PostHog capture: 200 delivered; 400 and 413 dead-letter the offending item (the batch is bisected
to find it); 401 the project key is revoked (pause, retry without using up the budget); 429 and 503
(and other 5xx) retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

BODY_EXCERPT_CHARS = 200


class Verdict(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    DISABLE = "disable"  # the destination is gone: disable it, dead-letter what is queued for it
    PAUSE = "pause"  # the credentials are refused: hold everything, retry slowly, never dead-letter
    SPLIT = "split"  # the batch as a whole was refused: bisect to the offending items


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    detail: str = ""
    retry_after: float | None = None
    throttled: bool = False


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def excerpt(body: bytes | str) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text[:BODY_EXCERPT_CHARS]


def webhook_decision(status: int, retry_after: str | None, body: bytes) -> Decision:
    if 200 <= status < 300:
        return Decision(Verdict.DELIVERED, "delivered")
    detail = f"HTTP {status}: {excerpt(body)}"
    if status == 410:
        return Decision(Verdict.DISABLE, "webhook_gone", detail)
    if status == 429 or status >= 500:
        return Decision(Verdict.RETRY, f"webhook_{status}", detail, parse_retry_after(retry_after),
                        throttled=status == 429)
    return Decision(Verdict.DEAD_LETTER, f"webhook_rejected:{status}", detail)


def posthog_decision(status: int, retry_after: str | None, body: bytes, batch_size: int) -> Decision:
    if 200 <= status < 300:
        return Decision(Verdict.DELIVERED, "delivered")
    detail = f"HTTP {status}: {excerpt(body)}"
    if status in (400, 413):
        if batch_size > 1:
            return Decision(Verdict.SPLIT, f"posthog_rejected:{status}", detail)
        return Decision(Verdict.DEAD_LETTER, f"posthog_rejected:{status}", detail)
    if status in (401, 403):
        return Decision(Verdict.PAUSE, f"posthog_unauthorized:{status}", detail)
    if status == 429 or status >= 500:
        return Decision(Verdict.RETRY, f"posthog_{status}", detail, parse_retry_after(retry_after),
                        throttled=status == 429)
    return Decision(Verdict.DEAD_LETTER, f"posthog_rejected:{status}", detail)

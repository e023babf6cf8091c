"""What each destination's answer means (Standard Webhooks / Svix; PostHog's capture service)."""

from __future__ import annotations

import pytest
from synergy_dispatcher.decisions import Verdict, posthog_decision, webhook_decision


@pytest.mark.parametrize(("status", "verdict", "reason"), [
    (200, Verdict.DELIVERED, "delivered"),
    (204, Verdict.DELIVERED, "delivered"),
    (410, Verdict.DISABLE, "webhook_gone"),
    (429, Verdict.RETRY, "webhook_429"),
    (500, Verdict.RETRY, "webhook_500"),
    (502, Verdict.RETRY, "webhook_502"),
    (503, Verdict.RETRY, "webhook_503"),
    (400, Verdict.DEAD_LETTER, "webhook_rejected:400"),
    (404, Verdict.DEAD_LETTER, "webhook_rejected:404"),
    (422, Verdict.DEAD_LETTER, "webhook_rejected:422"),
])
def test_webhook_statuses(status: int, verdict: Verdict, reason: str) -> None:
    decision = webhook_decision(status, None, b"")
    assert (decision.verdict, decision.reason) == (verdict, reason)


def test_a_webhook_429_honours_retry_after_and_counts_as_throttling() -> None:
    decision = webhook_decision(429, "120", b"slow down")
    assert (decision.retry_after, decision.throttled) == (120.0, True)
    assert webhook_decision(503, "garbage", b"").retry_after is None


def test_a_dead_letter_keeps_the_status_and_a_short_body_excerpt() -> None:
    decision = webhook_decision(422, None, b'{"error":  "unknown\n field"}' + b"x" * 500)
    assert decision.detail.startswith('HTTP 422: {"error": "unknown field"}xxx')
    assert len(decision.detail) == len("HTTP 422: ") + 200


@pytest.mark.parametrize(("status", "size", "verdict", "reason"), [
    (200, 10, Verdict.DELIVERED, "delivered"),
    (400, 10, Verdict.SPLIT, "posthog_rejected:400"),
    (400, 1, Verdict.DEAD_LETTER, "posthog_rejected:400"),
    (413, 5, Verdict.SPLIT, "posthog_rejected:413"),
    (413, 1, Verdict.DEAD_LETTER, "posthog_rejected:413"),
    (401, 10, Verdict.PAUSE, "posthog_unauthorized:401"),
    (429, 10, Verdict.RETRY, "posthog_429"),
    (503, 10, Verdict.RETRY, "posthog_503"),
    (500, 10, Verdict.RETRY, "posthog_500"),
])
def test_posthog_statuses(status: int, size: int, verdict: Verdict, reason: str) -> None:
    decision = posthog_decision(status, None, b"", size)
    assert (decision.verdict, decision.reason) == (verdict, reason)

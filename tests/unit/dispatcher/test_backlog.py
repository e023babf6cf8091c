"""The backlog's rules: what a drained round deletes, dead-letters, reschedules and leaves alone."""

from __future__ import annotations

import random

import pytest
from synergy_dispatcher.backlog import BacklogItem, Reschedule, first_schedule, plan_round
from synergy_streaming import DELIVERED, Failed, Retry
from synergy_streaming.retry import RetryPolicy

NOW = 1_764_000_000.0


def item(seq: int, user: str, attempts: int = 0, first: float | None = None) -> BacklogItem:
    return BacklogItem(seq=seq, user_key=f"7:1:{user}", event_id=f"e{seq}", payload=b"{}",
                       attempts=attempts, first_attempt_at=first)


def no_jitter(max_attempts: int = 12, window: float = 26 * 3600) -> RetryPolicy:
    """Backoff base 5 s, cap 1 h; the jitter drawn as its maximum so the delays are exact."""
    policy = RetryPolicy(max_attempts=max_attempts, max_window=window, base=5.0, cap=3600.0)
    policy.rng = _Max()
    return policy


class _Max(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def test_delivered_items_are_deleted_and_nothing_else_happens() -> None:
    plan = plan_round([item(1, "a"), item(2, "b")], [DELIVERED, DELIVERED], no_jitter(), NOW)
    assert plan.delivered == [1, 2] and plan.deleted == [1, 2]
    assert plan.rescheduled == [] and plan.released == [] and plan.dead_letters == []


def test_a_retried_head_keeps_its_place_and_the_users_later_items_wait_untouched() -> None:
    items = [item(1, "a", attempts=2, first=NOW - 100), item(2, "b"), item(3, "a"), item(4, "a")]
    retry = Retry("webhook_503", retry_after=30.0)
    plan = plan_round(items, [retry, DELIVERED, retry, retry], no_jitter(), NOW)
    assert plan.delivered == [2]
    # attempt 3: backoff 5 * 2**2 = 20 s, below the Retry-After of 30 s
    assert plan.rescheduled == [Reschedule(1, 3, NOW - 100, NOW + 30.0, "webhook_503")]
    assert plan.released == [3, 4]
    assert plan.dead_letters == []


def test_a_delivered_prefix_then_a_retry_deletes_the_prefix_only() -> None:
    items = [item(1, "a"), item(2, "a"), item(3, "a")]
    plan = plan_round(items, [DELIVERED, Retry("connection_error"), Retry("connection_error")],
                      no_jitter(), NOW)
    assert plan.delivered == [1]
    assert plan.rescheduled == [Reschedule(2, 1, NOW, NOW + 5.0, "connection_error")]
    assert plan.released == [3]


def test_a_refused_item_is_dead_lettered_and_the_users_next_item_goes_on() -> None:
    items = [item(1, "a"), item(2, "a")]
    plan = plan_round(items, [Failed("webhook_rejected:422", "HTTP 422: no"), DELIVERED], no_jitter(), NOW)
    assert [(x.item.seq, x.reason, x.detail, x.attempts) for x in plan.dead_letters] == [
        (1, "webhook_rejected:422", "HTTP 422: no", 1)]
    assert plan.delivered == [2] and plan.deleted == [2, 1]


def test_the_retry_budget_spent_in_both_attempts_and_time_dead_letters_the_head() -> None:
    head = item(1, "a", attempts=11, first=NOW - 26 * 3600 - 1)
    plan = plan_round([head, item(2, "a")], [Retry("webhook_500"), Retry("webhook_500")], no_jitter(), NOW)
    assert [(x.item.seq, x.reason, x.detail, x.attempts) for x in plan.dead_letters] == [
        (1, "retries_exhausted:webhook_500", "webhook_500", 12)]
    assert plan.released == [2] and plan.rescheduled == []


def test_many_attempts_within_the_window_are_still_retried() -> None:
    head = item(1, "a", attempts=40, first=NOW - 3600)
    plan = plan_round([head], [Retry("webhook_429", retry_after=1.0, throttled=True)], no_jitter(), NOW)
    assert plan.dead_letters == []
    assert plan.rescheduled == [Reschedule(1, 41, NOW - 3600, NOW + 3600.0, "webhook_429")]  # the cap


def test_a_paused_destination_moves_the_next_attempt_without_using_the_budget() -> None:
    head = item(1, "a", attempts=11, first=NOW - 30 * 3600)
    pause = Retry("posthog_unauthorized:401", retry_after=30.0, counts_attempt=False)
    plan = plan_round([head], [pause], no_jitter(), NOW)
    assert plan.dead_letters == []
    assert plan.rescheduled == [Reschedule(1, 11, NOW - 30 * 3600, NOW + 30.0, "posthog_unauthorized:401")]


def test_planning_the_same_round_twice_gives_the_same_plan() -> None:
    items = [item(1, "a"), item(2, "b"), item(3, "a")]
    outcomes = [Retry("webhook_503", retry_after=10.0), DELIVERED, Retry("webhook_503", retry_after=10.0)]
    assert plan_round(items, outcomes, no_jitter(), NOW) == plan_round(items, outcomes, no_jitter(), NOW)


def test_a_round_with_missing_outcomes_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_round([item(1, "a")], [], no_jitter(), NOW)


def test_an_item_entering_after_a_failed_live_attempt_keeps_that_attempt() -> None:
    assert first_schedule(Retry("webhook_503", retry_after=60.0), 1, NOW - 2, no_jitter(), NOW) == (
        1, NOW - 2, NOW + 60.0)
    assert first_schedule(Retry("timeout_error"), 1, None, no_jitter(), NOW) == (1, NOW, NOW + 5.0)


def test_an_item_entering_behind_the_backlog_is_untried_and_due_at_once() -> None:
    assert first_schedule(None, 1, NOW - 2, no_jitter(), NOW) == (0, None, NOW)


def test_an_item_refused_by_a_revoked_key_enters_without_an_attempt() -> None:
    pause = Retry("posthog_unauthorized:401", retry_after=30.0, counts_attempt=False)
    assert first_schedule(pause, 1, NOW, no_jitter(), NOW) == (0, NOW, NOW + 30.0)

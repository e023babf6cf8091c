from __future__ import annotations

import random

import pytest
from synergy_cio_sink.batching import batch_body, pack_batches
from synergy_cio_sink.coalesce import SEND, SUPERSEDED, SnapshotCoalescer, Wait
from synergy_streaming.offsets import OffsetTracker
from synergy_streaming.ordering import KeyedQueues
from synergy_streaming.rate_limit import JITTER_HEADROOM, AdaptiveRateLimit
from synergy_streaming.retry import GiveUp, RetryAt, RetryPolicy, is_retryable_status, parse_retry_after


def _sent_per_second(limit: AdaptiveRateLimit, requests: int, start: float = 0.0) -> list[float]:
    return [limit.reserve(start) for _ in range(requests)]


def test_rate_limit_never_books_more_than_the_budget_in_any_second() -> None:
    slots = _sent_per_second(AdaptiveRateLimit(fleet_limit=100), 500)
    for i, slot in enumerate(slots):
        in_window = sum(1 for other in slots[i:] if other < slot + 1.0)
        assert in_window <= 100
    assert slots[-1] >= 499 / (100 * JITTER_HEADROOM) - 1e-9


def test_rate_limit_takes_its_share_of_partitions() -> None:
    limit = AdaptiveRateLimit(fleet_limit=100)
    limit.set_share(4 / 12)
    slots = _sent_per_second(limit, 60)
    assert sum(1 for slot in slots if slot < 1.0) <= 34


def test_429_halves_the_rate_honours_retry_after_then_recovers() -> None:
    limit = AdaptiveRateLimit(fleet_limit=100, recovery_seconds=10)
    limit.reserve(0.0)
    limit.throttled(now=0.0, retry_after=2.0)
    assert limit.rate == 100 * JITTER_HEADROOM / 2
    assert limit.reserve(0.5) >= 2.0
    limit.reserve(20.0)
    assert limit.rate == limit.ceiling


def test_retry_classification() -> None:
    assert all(is_retryable_status(s) for s in (408, 429, 500, 502, 503, 504))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 413, 422))
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(base=1.0, cap=30.0, rng=random.Random(1))
    delays = [policy.backoff(attempt) for attempt in range(1, 8) for _ in range(50)]
    assert all(0 <= d <= 30 for d in delays)
    assert max(policy.backoff(3) for _ in range(200)) <= 4.0
    assert min(delays) < 0.5


def test_dead_letter_only_after_both_attempts_and_window() -> None:
    policy = RetryPolicy(max_attempts=3, max_window=60.0, rng=random.Random(0))
    too_soon = policy.after_failure(3, first_attempt_at=0, now=10, retry_after=None, reason="503")
    too_few = policy.after_failure(2, first_attempt_at=0, now=100, retry_after=None, reason="503")
    assert isinstance(too_soon, RetryAt) and isinstance(too_few, RetryAt)
    dead = policy.after_failure(3, first_attempt_at=0, now=61, retry_after=None, reason="503")
    assert dead == GiveUp("retries_exhausted:503")
    honoured = policy.after_failure(1, first_attempt_at=0, now=0, retry_after=7.0, reason="429")
    assert isinstance(honoured, RetryAt) and honoured.at >= 7.0


def test_batches_stay_under_request_and_item_limits() -> None:
    items = [(i, b'{"x":"' + b"a" * 1000 + b'"}') for i in range(1000)] + [(9999, b"b" * (33 * 1024))]
    packed = pack_batches(items)
    assert packed.oversize == [9999]
    assert [i for batch in packed.batches for i, _ in batch] == list(range(1000))
    assert all(len(batch_body(batch)) <= 500 * 1024 for batch in packed.batches)
    assert all(len(batch) <= 500 for batch in packed.batches)


def test_snapshots_are_coalesced_per_user_per_interval() -> None:
    coalescer = SnapshotCoalescer(interval=10)
    s1, s2, s3, s4 = (1, 0.0, 1), (2, 0.0, 2), (3, 0.0, 3), (4, 0.0, 4)
    assert coalescer.admit("u1", s1) and coalescer.decide("u1", s1, now=0) == SEND
    coalescer.sent("u1", s1, now=0)
    assert coalescer.admit("u1", s2) and coalescer.decide("u1", s2, now=1) == Wait(9)
    assert coalescer.admit("u1", s3)
    assert coalescer.decide("u1", s2, now=2) is SUPERSEDED
    assert coalescer.admit("u2", (1, 0.0, 5)) and coalescer.decide("u2", (1, 0.0, 5), now=2) == SEND
    assert coalescer.decide("u1", s3, now=9) == Wait(1)
    assert coalescer.decide("u1", s3, now=10) == SEND
    coalescer.sent("u1", s3, now=10)
    assert coalescer.admit("u1", s4) and coalescer.decide("u1", s4, now=11) == Wait(9)
    assert coalescer.decide("u1", s4, now=20) == SEND


def test_a_snapshot_older_than_one_seen_or_sent_is_refused() -> None:
    coalescer = SnapshotCoalescer(interval=10, memory=2)
    newer, older_replayed = (5, 100.0, 7), (4, 90.0, 99)  # the replay sits at a later offset
    assert coalescer.admit("u1", newer)
    coalescer.sent("u1", newer, now=0)
    assert coalescer.admit("u1", older_replayed) is False
    assert coalescer.admit("u1", newer) is True  # the same snapshot read again is no older
    assert coalescer.admit("u2", (1, 0.0, 1)) and coalescer.admit("u3", (1, 0.0, 1))
    assert coalescer.admit("u1", older_replayed) is True  # u1 was forgotten: the memory holds 2 people


def test_offsets_commit_only_the_done_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (5, 6, 7):
        tracker.track("t", 0, offset)
    tracker.complete("t", 0, 6)
    assert tracker.to_commit() == {}
    tracker.complete("t", 0, 5)
    assert tracker.to_commit() == {("t", 0): 7}
    tracker.committed({("t", 0): 7})
    assert tracker.to_commit() == {}
    tracker.complete("t", 0, 7)
    assert tracker.to_commit() == {("t", 0): 8}


def test_a_retrying_user_waits_while_others_flow() -> None:
    queues: KeyedQueues[str] = KeyedQueues()
    for key, item in (("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")):
        queues.push(key, item)
    assert queues.take_ready(0, 10) == [("a", ["a1"]), ("b", ["b1"])]
    queues.retry_later("a", at=5)
    queues.done("b", 1)
    assert queues.take_ready(1, 10) == [("b", ["b2"])]
    queues.done("b", 1)
    assert queues.take_ready(4, 10) == []
    assert queues.take_ready(5, 10) == [("a", ["a1"])]
    queues.done("a", 1)
    assert queues.take_ready(5, 10) == [("a", ["a2"])]


def test_a_users_run_goes_together_and_retries_together() -> None:
    queues: KeyedQueues[int] = KeyedQueues()
    for i in range(5):
        queues.push("u", i)
    assert queues.take_ready(0, limit=10, per_key=3) == [("u", [0, 1, 2])]
    queues.retry_later("u", at=1)
    assert queues.take_ready(1, limit=10, per_key=10) == [("u", [0, 1, 2, 3, 4])]
    queues.done("u", 5)
    assert len(queues) == 0


def test_hot_user_backlog_is_parked_not_stalling_the_partition() -> None:
    queues: KeyedQueues[int] = KeyedQueues(max_pending_per_key=3)
    queues.push("hot", 0)
    queues.take_ready(0, 1)
    queues.retry_later("hot", at=100)
    parked = [p for i in range(1, 6) for p in queues.push("hot", i)]
    assert parked == [1, 2, 3, 4, 5]
    assert len(queues) == 1
    queues.done("hot", 1)
    assert queues.push("hot", 6) == []


def test_the_sliding_window_holds_back_a_burst_of_late_senders() -> None:
    limit = AdaptiveRateLimit(fleet_limit=10)
    sends = 0
    for _ in range(20):  # all wake at once at t=5
        if limit.window_wait(5.0) == 0:
            limit.sent(5.0)
            sends += 1
    assert sends == int(10 * JITTER_HEADROOM)
    assert limit.window_wait(5.5) == 0.5
    assert limit.window_wait(6.0) == 0


def test_a_burst_of_429s_cuts_the_rate_once_not_to_the_floor() -> None:
    limit = AdaptiveRateLimit(fleet_limit=100, recovery_seconds=10)
    limit.reserve(0.0)
    for _ in range(8):  # the requests in flight when Customer.io started throttling
        limit.throttled(now=0.1, retry_after=None)
    assert limit.rate == 100 * JITTER_HEADROOM / 2
    limit.throttled(now=1.2, retry_after=None)  # still throttled a second later: cut again
    assert limit.rate == pytest.approx((47.5 + 9.5 * 1.1) / 2)  # after 1.1 s of recovery at 9.5/s per s

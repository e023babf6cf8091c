"""Pure pieces of synergy_common.http: the lookup budget and correlation ids."""

from __future__ import annotations

from synergy_common.http import TokenBucket, correlation_id_from


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_gives_its_burst_at_once_then_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=50, burst=100, clock=clock)
    assert sum(bucket.take() for _ in range(250)) == 100
    clock.now += 1.0
    assert sum(bucket.take() for _ in range(250)) == 50
    clock.now += 0.1
    assert sum(bucket.take() for _ in range(250)) == 5


def test_the_bucket_never_saves_more_than_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=50, burst=100, clock=clock)
    clock.now += 3600
    assert sum(bucket.take() for _ in range(1000)) == 100


def test_a_clients_correlation_id_is_kept_only_when_short_and_printable():
    assert correlation_id_from("req-42") == "req-42"
    assert correlation_id_from("  req-42 ") == "req-42"
    for unusable in (None, "", "x" * 129, "bad\nid"):
        generated = correlation_id_from(unusable)
        assert len(generated) == 36 and generated.count("-") == 4
    assert correlation_id_from(None) != correlation_id_from(None)

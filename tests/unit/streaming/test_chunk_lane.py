"""The chunk lane (in runs): a chunk none of whose keys is queued, in flight, retrying or parked goes as
batch-sized slices of its runs, past the per-key queues. Its guarantees are the per-key path's, so each
test runs with the lane on and off (`chunk_lane`). On the in-memory broker and the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from synergy_streaming import DELIVERED, Partition, Retry, Run

from tests.unit.streaming.conftest import TOPIC, envelope, until
from tests.unit.streaming.test_runs import runs_by_user

P0, P1 = Partition(TOPIC, 0), Partition(TOPIC, 1)
LANE = pytest.mark.parametrize("chunk_lane", [True, False], ids=["lane", "by-key"])


class PerRunAnswers:
    """A deliver function answering each run: Retry for the runs of a key while its count of
    `failures` lasts (and for the key's later runs of that call), DELIVERED otherwise; a call with an id of `gated` waits for `gate` first.
    Records the (key, event ids) of each call, and the ids delivered, in the order answered."""

    def __init__(self, failures: dict[str, int] | None = None, gated: str = "") -> None:
        self.failures = failures or {}
        self.gated, self.gate = gated, asyncio.Event()
        self.calls: list[list[tuple[str, list[str]]]] = []
        self.delivered: list[str] = []

    def sent(self, key: str) -> list[list[str]]:
        return [ids for call in self.calls for run_key, ids in call if run_key == key]

    async def __call__(self, target: Any, items: Sequence[Run]) -> Any:
        self.calls.append([(run.key, list(run.items or [])) for run in items])
        if self.gated and any(self.gated in (run.items or []) for run in items):
            await self.gate.wait()
        answers: list[Any] = []
        refused: set[str] = set()
        for run in items:
            if run.key in refused:  # as an ordered target would: nothing of the key after a failure
                answers.append(Retry("503", retry_after=10))
            elif self.failures.get(run.key):
                self.failures[run.key] -= 1
                refused.add(run.key)
                answers.append(Retry("503", retry_after=10))
            else:
                answers.append(DELIVERED)
                self.delivered.extend(run.items or [])
        return answers


@LANE
async def test_a_chunk_whose_key_is_in_flight_waits_for_it(broker, clock, processor_factory, chunk_lane) -> None:
    deliver = PerRunAnswers(gated="a0")
    for event_id, user in [("a0", "a"), ("b0", "b")]:
        broker.produce(TOPIC, 0, envelope(event_id, user))
    async with processor_factory(deliver, prepare_runs=runs_by_user, chunk_lane=chunk_lane):
        await until(lambda: len(deliver.calls) == 1, clock, limit=5)  # a0, b0 out, not answered
        for event_id, user in [("a1", "a"), ("c0", "c")]:  # a later chunk of the same partition
            broker.produce(TOPIC, 0, envelope(event_id, user))
        broker.produce(TOPIC, 1, envelope("d0", "d"))  # another partition's chunk
        await until(lambda: "d0" in deliver.delivered, clock, limit=5)
        since = clock.now()
        await until(lambda: clock.now() - since >= 2, clock, limit=5)
        assert deliver.sent("a") == [["a0"]]  # a1 waits while a0 is out
        assert broker.committed("g") == {P1: 1}
        deliver.gate.set()
        await until(lambda: broker.committed("g") == {P0: 4, P1: 1}, clock)
    assert deliver.sent("a") == [["a0"], ["a1"]]
    assert sorted(deliver.delivered) == ["a0", "a1", "b0", "c0", "d0"]
    assert deliver.delivered.index("a0") < deliver.delivered.index("a1")


@LANE
async def test_a_retrying_key_of_a_chunk_does_not_hold_the_other_keys(
        broker, clock, processor_factory, chunk_lane) -> None:
    deliver = PerRunAnswers({"a": 2})
    for event_id, user in [("a0", "a"), ("b0", "b")]:
        broker.produce(TOPIC, 0, envelope(event_id, user))
    async with processor_factory(deliver, prepare_runs=runs_by_user, chunk_lane=chunk_lane):
        await until(lambda: deliver.delivered == ["b0"], clock, limit=5)
        for event_id, user in [("a1", "a"), ("b1", "b"), ("c0", "c")]:  # while a0 waits for its retry
            broker.produce(TOPIC, 0, envelope(event_id, user))
        await until(lambda: {"b1", "c0"} <= set(deliver.delivered), clock, limit=5)
        assert "a1" not in deliver.delivered and "a0" not in deliver.delivered
        assert broker.committed("g").get(P0) is None  # a0 holds the partition's prefix
        await until(lambda: broker.committed("g").get(P0) == 5, clock)
    assert [i for i in deliver.delivered if i.startswith("a")] == ["a0", "a1"]
    assert sorted(deliver.delivered) == ["a0", "a1", "b0", "b1", "c0"]
    assert deliver.sent("a")[:2] == [["a0"], ["a0"]]  # a1 never went before a0's first retry was due


@LANE
@pytest.mark.parametrize("held", ["first", "second"])
async def test_commits_stay_at_the_done_prefix_while_a_slice_of_the_chunk_is_out(
        broker, clock, processor_factory, chunk_lane, held) -> None:
    deliver = PerRunAnswers(gated="a0" if held == "first" else "c0")
    for event_id, user in [("a0", "a"), ("b0", "b"), ("c0", "c"), ("d0", "d")]:  # one chunk, two batches
        broker.produce(TOPIC, 0, envelope(event_id, user))
    async with processor_factory(deliver, prepare_runs=runs_by_user, chunk_lane=chunk_lane, max_batch_items=2):
        await until(lambda: len(deliver.delivered) == 2, clock, limit=5)
        since = clock.now()
        await until(lambda: clock.now() - since >= 3, clock, limit=5)  # three commit intervals
        assert broker.committed("g").get(P0) == (None if held == "first" else 2)
        deliver.gate.set()
        await until(lambda: broker.committed("g").get(P0) == 4, clock)
    assert sorted(deliver.delivered) == ["a0", "b0", "c0", "d0"]
    assert sorted(ids for call in deliver.calls for _, ids in call) == [["a0"], ["b0"], ["c0"], ["d0"]]
    assert sorted(len(call) for call in deliver.calls) == [2, 2]  # two batches of two runs


@LANE
async def test_a_retry_in_a_chunk_with_a_later_chunk_waiting_keeps_each_keys_order(
        broker, clock, processor_factory, chunk_lane) -> None:
    deliver = PerRunAnswers({"a": 1}, gated="a0")
    for event_id, user in [("a0", "a"), ("b0", "b")]:
        broker.produce(TOPIC, 0, envelope(event_id, user))
    async with processor_factory(deliver, prepare_runs=runs_by_user, chunk_lane=chunk_lane):
        await until(lambda: len(deliver.calls) == 1, clock, limit=5)
        for event_id, user in [("a1", "a"), ("b1", "b"), ("c0", "c")]:  # arrives while a0, b0 are out
            broker.produce(TOPIC, 0, envelope(event_id, user))
        since = clock.now()
        await until(lambda: clock.now() - since >= 1, clock, limit=5)
        deliver.gate.set()  # a0 refused (a retry in 10 s), b0 delivered
        await until(lambda: {"b0", "b1", "c0"} <= set(deliver.delivered), clock, limit=5)
        assert "a0" not in deliver.delivered and "a1" not in deliver.delivered
        await until(lambda: broker.committed("g").get(P0) == 5, clock)
    assert [i for i in deliver.delivered if i.startswith("a")] == ["a0", "a1"]
    assert [i for i in deliver.delivered if i.startswith("b")] == ["b0", "b1"]
    assert sorted(deliver.delivered) == ["a0", "a1", "b0", "b1", "c0"]

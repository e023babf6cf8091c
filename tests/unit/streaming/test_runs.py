"""The run-level API: `prepare_runs` answers one Run per key of a poll chunk, and the Run is the unit of
work (queued, batched, delivered, settled). On the in-memory broker and the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from synergy_streaming import DELIVERED, Partition, PolledChunk, RejectRecord, Retry, Run, SplitBatch

from tests.unit.streaming.conftest import TOPIC, RecordingWriter, envelope, until

P0, P1 = Partition(TOPIC, 0), Partition(TOPIC, 1)


def runs_by_user(chunk: PolledChunk) -> list[Run | RejectRecord]:
    """One Run per user of the chunk, its items the records' event ids; `unmappable` rejected; a record
    that is not an envelope (None) left to the runtime."""
    groups: dict[str, list[int]] = {}
    events: dict[int, str] = {}
    answers: list[Run | RejectRecord] = []
    for index in range(len(chunk.records)) if chunk.indices is None else chunk.indices:
        payload = chunk.payloads[index]
        if payload is None:
            continue
        events[index] = payload["event_id"]
        if payload["event_id"] == "unmappable":
            answers.append(RejectRecord(index, "unmappable", "no user"))
            continue
        groups.setdefault(payload["identifiers"]["id"], []).append(index)
    answers.extend(Run(user, "t", indices, [events[i] for i in indices])
                   for user, indices in groups.items())
    return answers


@dataclass
class RunRecorder:
    """A deliver function over runs: records each call's runs as (key, event ids), answers from a script."""

    calls: list[list[tuple[str, list[str]]]] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    answer: Callable[[list[str]], Any] = lambda ids: DELIVERED
    gate: Callable[[list[str]], asyncio.Event | None] = lambda ids: None

    async def __call__(self, target: Any, items: Sequence[Run]) -> Any:
        self.calls.append([(run.key, list(run.items or [])) for run in items])
        ids = [i for run in items for i in run.items or []]
        gate = self.gate(ids)
        if gate is not None:
            await gate.wait()
        outcome = self.answer(ids)
        self.answers.append(outcome)
        return outcome

    def ids(self, call: list[tuple[str, list[str]]]) -> list[str]:
        return [i for _, ids in call for i in ids]

    @property
    def delivered(self) -> list[str]:
        """Event ids of the calls answered DELIVERED, in call order."""
        return [i for call, outcome in zip(self.calls, self.answers, strict=False) if outcome is DELIVERED
                for i in self.ids(call)]


async def test_a_keys_records_of_a_chunk_go_as_one_run_and_settle_whole(broker, clock, processor_factory) -> None:
    for event_id, user in [("a0", "a"), ("b0", "b"), ("a1", "a"), ("unmappable", "x"), ("a2", "a")]:
        broker.produce(TOPIC, 0, envelope(event_id, user))
    broker.produce(TOPIC, 0, b"{not json")
    broker.produce(TOPIC, 1, None)  # type: ignore[arg-type]  # a tombstone: no value
    broker.produce(TOPIC, 1, envelope("c0", "c"))
    writer = RecordingWriter()
    recorder = RunRecorder()
    async with processor_factory(recorder, writer=writer, prepare_runs=runs_by_user) as processor:
        await until(lambda: broker.committed("g") == {P0: 6, P1: 2}, clock)
        assert processor.commits.tracker.outstanding == 0
    runs = sorted(run for call in recorder.calls for run in call)
    assert runs == [("a", ["a0", "a1", "a2"]), ("b", ["b0"]), ("c", ["c0"])]
    assert sorted((letter.reason, letter.source_partition, letter.source_offset) for letter in writer.letters) == [
        ("malformed_message", 0, 5), ("malformed_message", 1, 0), ("unmappable", 0, 3)]


async def test_a_refused_batch_splits_its_runs_and_only_the_bad_record_is_dead_lettered(
        broker, clock, processor_factory) -> None:
    for event_id, user in [("a0", "a"), ("b0", "b"), ("bad", "a"), ("a2", "a"), ("b1", "b")]:
        broker.produce(TOPIC, 0, envelope(event_id, user))
    writer = RecordingWriter()
    recorder = RunRecorder(answer=lambda ids: SplitBatch("400", "invalid item") if "bad" in ids else DELIVERED)
    async with processor_factory(recorder, writer=writer, prepare_runs=runs_by_user):
        await until(lambda: broker.committed("g").get(P0) == 5, clock)
    assert recorder.calls[0] == [("a", ["a0", "bad", "a2"]), ("b", ["b0", "b1"])]  # one run a key, refused
    assert sorted(recorder.delivered) == ["a0", "a2", "b0", "b1"]  # each once
    a_order = [i for i in recorder.delivered if i.startswith("a")]
    assert a_order == ["a0", "a2"]
    assert [(letter.reason, letter.source_offset, letter.attempts) for letter in writer.letters] == [
        ("400", 2, 1)]


async def test_revocation_with_a_run_in_flight_commits_exactly_the_done_prefix(
        broker, clock, processor_factory) -> None:
    gate = asyncio.Event()
    for event_id, user in [("e0", "a"), ("e1", "b"), ("e2", "b"), ("e3", "c")]:  # one chunk of partition 0
        broker.produce(TOPIC, 0, envelope(event_id, user))
    first = RunRecorder(gate=lambda ids: gate if "e1" in ids else None)
    second = RunRecorder()
    # a batch holds two records at most: runs a=[e0], b=[e1, e2], c=[e3] go in three batches
    async with processor_factory(first, prepare_runs=runs_by_user, revoke_grace=0.2, max_batch_items=2,
                                 max_in_flight=3) as p1:
        await until(lambda: len(first.calls) == 3 and len(first.answers) == 2, clock, limit=10)
        await until(lambda: broker.committed("g").get(P0) == 1, clock, limit=10)
        async with processor_factory(second, prepare_runs=runs_by_user, revoke_grace=0.2) as p2:
            await until(lambda: p1.generation >= 1 and bool(p2.assigned), clock, limit=30)
            assert broker.committed("g").get(P0) == 1  # e3 was delivered, but the run of e1, e2 holds it
            gate.set()  # the old owner's answer for that run comes too late to count
            await until(lambda: broker.committed("g").get(P0) == 4, clock, limit=60)
            owner = p1 if P0 in p1.assigned else p2
            again = (first.calls[3:] if owner is p1 else second.calls)
    assert sorted(run for call in again for run in call) == [("b", ["e1", "e2"]), ("c", ["e3"])]
    assert [c[P0] for c in broker.commit_log("g") if P0 in c] == [1, 4]


async def test_a_retrying_key_holds_its_later_runs_back_while_other_keys_flow(
        broker, clock, processor_factory) -> None:
    failures = {"a0": 2}

    def answer(ids: list[str]) -> Any:
        if "a0" in ids and failures["a0"]:
            failures["a0"] -= 1
            return Retry("503", retry_after=10)
        return DELIVERED

    recorder = RunRecorder(answer=answer)
    broker.produce(TOPIC, 0, envelope("a0", "a"))
    async with processor_factory(recorder, prepare_runs=runs_by_user):
        await until(lambda: len(recorder.answers) == 1, clock, limit=5)
        for event_id, user in [("a1", "a"), ("b0", "b"), ("a2", "a")]:  # a later chunk, while a0 waits
            broker.produce(TOPIC, 0, envelope(event_id, user))
        await until(lambda: "b0" in recorder.delivered, clock, limit=5)
        assert not {"a1", "a2"} & set(recorder.delivered)
        await until(lambda: broker.committed("g").get(P0) == 4, clock)
    # the key's later run goes behind its head, in the same batch, split into single records once refused
    calls_of_a = [[i for key, ids in call if key == "a" for i in ids] for call in recorder.calls
                  if any(key == "a" for key, _ in call)]
    assert calls_of_a == [["a0"], ["a0", "a1", "a2"], ["a0", "a1", "a2"]]
    assert recorder.delivered == ["b0", "a0", "a1", "a2"]


async def test_a_hot_keys_backlog_of_runs_is_parked_record_by_record(broker, clock, processor_factory) -> None:
    writer = RecordingWriter()
    recorder = RunRecorder(answer=lambda ids: Retry("503", retry_after=1000) if "h0" in ids else DELIVERED)
    broker.produce(TOPIC, 0, envelope("h0", "hot"))
    async with processor_factory(recorder, writer=writer, prepare_runs=runs_by_user, max_pending_per_key=3):
        await until(lambda: len(recorder.answers) == 1, clock, limit=20)
        for n in range(1, 6):  # arrive while h0 waits for its retry: one run of five records
            broker.produce(TOPIC, 0, envelope(f"h{n}", "hot"))
        broker.produce(TOPIC, 0, envelope("c0", "cold"))
        await until(lambda: "c0" in recorder.delivered and len(writer.letters) == 5, clock, limit=20)
        assert broker.committed("g").get(P0) is None  # h0 still holds the partition's prefix
    assert [letter.reason for letter in writer.letters] == ["hot_key_parked"] * 5
    assert sorted(letter.source_offset for letter in writer.letters) == [1, 2, 3, 4, 5]
    assert [ids for call in recorder.calls for key, ids in call if key == "hot"] == [["h0"]]

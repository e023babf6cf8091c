"""Spans (`PolledChunk.span`): a poll chunk answered as one unit in offset order. A partition's spans go as
consecutive batch-sized slices, one at a time, while their keys are nowhere else; cut into one Run a key
otherwise, and whenever a slice is not delivered whole. The guarantees are the per-key path's: one run
of a key out at a time, each key's records in offset order, every record delivered or dead-lettered once.
On the in-memory broker and the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from synergy_streaming import DELIVERED, Partition, PolledChunk, Retry, Run, Span, SplitBatch

from tests.unit.streaming.conftest import TOPIC, RecordingWriter, envelope, until

P0, P1 = Partition(TOPIC, 0), Partition(TOPIC, 1)


def span_of_events(chunk: PolledChunk) -> list[Run]:
    """The chunk as one span, its items the records' event ids (a record that is not an envelope reads
    as None: the runtime takes it out)."""
    wanted = range(len(chunk.records)) if chunk.indices is None else chunk.indices
    return [chunk.span("t", [(payload or {}).get("event_id") for payload in map(chunk.payloads.__getitem__, wanted)])]


class SpanRecorder:
    """A deliver function recording each call as (kind, key, event ids) per item, answering from a script
    of the call's ids; a call holding `gated` waits for `gate` first."""

    def __init__(self, answer: Callable[[list[str]], Any] = lambda ids: DELIVERED, gated: str = "") -> None:
        self.answer, self.gated, self.gate = answer, gated, asyncio.Event()
        self.calls: list[list[tuple[str, str, list[str]]]] = []
        self.answers: dict[int, Any] = {}  # by call, as answered

    async def __call__(self, target: Any, items: Sequence[Run]) -> Any:
        call = [(type(item).__name__, item.key, list(item.items or [])) for item in items]
        number = len(self.calls)
        self.calls.append(call)
        ids = [i for _, _, item_ids in call for i in item_ids]
        if self.gated in ids:
            await self.gate.wait()
        outcome = self.answer(ids)
        self.answers[number] = outcome
        return outcome

    @property
    def delivered(self) -> list[str]:
        """Event ids of the items answered DELIVERED (the whole call, or the item's own answer), in the
        order the calls were made."""
        out: list[str] = []
        for number, call in enumerate(self.calls):
            if number not in self.answers:
                continue
            outcome = self.answers[number]
            per_item = outcome if type(outcome) is list else [outcome] * len(call)
            for (_, _, ids), answered in zip(call, per_item, strict=True):
                if answered is DELIVERED:
                    out.extend(ids)
        return out


def refusing_a0_once() -> Callable[[list[str]], Any]:
    """An answer script: a Retry (in 10 s) for the first call holding a0, DELIVERED for every other."""
    refused: list[bool] = []

    def answer(ids: list[str]) -> Any:
        if "a0" in ids and not refused:
            refused.append(True)
            return Retry("503", retry_after=10)
        return DELIVERED
    return answer


def produce(broker: Any, partition: int, records: list[tuple[str, str]]) -> None:
    for event_id, user in records:
        broker.produce(TOPIC, partition, envelope(event_id, user), key=user.encode())


async def test_a_span_goes_in_offset_order_as_slices_one_at_a_time_and_commits_its_chunk(
        broker, clock, processor_factory) -> None:
    deliver = SpanRecorder(gated="e0")
    produce(broker, 0, [("e0", "a"), ("e1", "b"), ("e2", "a"), ("e3", "c"), ("e4", "a")])
    async with processor_factory(deliver, prepare_runs=span_of_events, max_batch_items=2):
        await until(lambda: len(deliver.calls) == 1, clock, limit=5)
        since = clock.now()
        await until(lambda: clock.now() - since >= 2, clock, limit=5)
        assert len(deliver.calls) == 1  # the next slice waits for this one: a's records are in both
        assert broker.committed("g").get(P0) is None
        deliver.gate.set()
        await until(lambda: broker.committed("g") == {P0: 5}, clock)
    assert deliver.calls == [[("Span", "", ["e0", "e1"])], [("Span", "", ["e2", "e3"])], [("Span", "", ["e4"])]]
    assert deliver.delivered == ["e0", "e1", "e2", "e3", "e4"]


async def test_spans_of_two_partitions_go_at_once(broker, clock, processor_factory) -> None:
    deliver = SpanRecorder(gated="a0")
    produce(broker, 0, [("a0", "a"), ("b0", "b")])
    produce(broker, 1, [("c0", "c"), ("d0", "d")])
    async with processor_factory(deliver, prepare_runs=span_of_events):
        await until(lambda: deliver.delivered == ["c0", "d0"], clock, limit=5)  # while P0's span is out
        await until(lambda: broker.committed("g") == {P1: 2}, clock, limit=5)
        deliver.gate.set()
        await until(lambda: broker.committed("g") == {P0: 2, P1: 2}, clock)
    assert sorted(deliver.delivered) == ["a0", "b0", "c0", "d0"]


async def test_a_span_with_a_retrying_key_goes_by_key_behind_it(broker, clock, processor_factory) -> None:
    deliver = SpanRecorder(refusing_a0_once())
    produce(broker, 0, [("a0", "a")])
    async with processor_factory(deliver, prepare_runs=span_of_events):
        await until(lambda: len(deliver.calls) == 1, clock, limit=5)  # a0 refused: retried in 10 s
        produce(broker, 0, [("a1", "a"), ("b0", "b")])
        await until(lambda: "b0" in deliver.delivered, clock, limit=5)
        assert "a1" not in deliver.delivered and "a0" not in deliver.delivered
        assert [kind for call in deliver.calls[1:] for kind, _, _ in call] == ["Run"]  # cut by key
        await until(lambda: broker.committed("g") == {P0: 3}, clock)
    assert [i for i in deliver.delivered if i.startswith("a")] == ["a0", "a1"]
    assert sorted(deliver.delivered) == ["a0", "a1", "b0"]


async def test_a_refused_slice_is_bisected_to_the_bad_record_and_only_it_is_dead_lettered(
        broker, clock, processor_factory) -> None:
    deliver = SpanRecorder(lambda ids: SplitBatch("400", "invalid item") if "bad" in ids else DELIVERED)
    produce(broker, 0, [("a0", "a"), ("b0", "b"), ("bad", "a"), ("a2", "a"), ("b1", "b")])
    writer = RecordingWriter()
    async with processor_factory(deliver, writer=writer, prepare_runs=span_of_events):
        await until(lambda: broker.committed("g") == {P0: 5}, clock)
    assert deliver.calls[0] == [("Span", "", ["a0", "b0", "bad", "a2", "b1"])]
    assert sorted(deliver.delivered) == ["a0", "a2", "b0", "b1"]  # each once
    assert [i for i in deliver.delivered if i.startswith("a")] == ["a0", "a2"]
    assert [(letter.reason, letter.source_offset, letter.attempts) for letter in writer.letters] == [("400", 2, 1)]


async def test_a_retried_slice_sends_the_spans_later_slices_by_key_after_it(broker, clock, processor_factory) -> None:
    deliver = SpanRecorder(refusing_a0_once())
    produce(broker, 0, [("a0", "a"), ("b0", "b"), ("a1", "a"), ("c0", "c")])  # slices [a0 b0] [a1 c0]
    async with processor_factory(deliver, prepare_runs=span_of_events, max_batch_items=2):
        await until(lambda: "c0" in deliver.delivered, clock, limit=5)  # c0 does not wait for a0's retry
        assert "a0" not in deliver.delivered and "a1" not in deliver.delivered
        await until(lambda: broker.committed("g") == {P0: 4}, clock)
    assert deliver.calls[0] == [("Span", "", ["a0", "b0"])]
    assert [i for i in deliver.delivered if i.startswith("a")] == ["a0", "a1"]
    assert sorted(deliver.delivered) == ["a0", "a1", "b0", "c0"]


async def test_a_key_in_two_partitions_waits_for_the_span_that_has_it_out(broker, clock, processor_factory) -> None:
    deliver = SpanRecorder(gated="a0")
    produce(broker, 0, [("a0", "a"), ("b0", "b")])
    async with processor_factory(deliver, prepare_runs=span_of_events):
        await until(lambda: len(deliver.calls) == 1, clock, limit=5)
        produce(broker, 1, [("a1", "a"), ("c0", "c")])  # the same key, in the other partition
        await until(lambda: "c0" in deliver.delivered, clock, limit=5)
        since = clock.now()
        await until(lambda: clock.now() - since >= 2, clock, limit=5)
        assert "a1" not in deliver.delivered  # one run of a key out at a time
        deliver.gate.set()
        await until(lambda: broker.committed("g") == {P0: 2, P1: 2}, clock)
    assert [i for i in deliver.delivered if i.startswith("a")] == ["a0", "a1"]
    assert sorted(deliver.delivered) == ["a0", "a1", "b0", "c0"]


async def test_an_undecodable_record_is_dead_lettered_and_the_span_covers_the_rest(
        broker, clock, processor_factory) -> None:
    deliver = SpanRecorder()
    produce(broker, 0, [("a0", "a")])
    broker.produce(TOPIC, 0, b"{not json", key=b"a")
    produce(broker, 0, [("a2", "a")])
    writer = RecordingWriter()
    async with processor_factory(deliver, writer=writer, prepare_runs=span_of_events):
        await until(lambda: broker.committed("g") == {P0: 3}, clock)
    assert deliver.calls == [[("Span", "", ["a0", "a2"])]]
    assert [(letter.reason, letter.source_offset) for letter in writer.letters] == [("malformed_message", 1)]


def test_a_span_cut_by_key_keeps_each_keys_records_items_and_attempts_in_order() -> None:
    records = [type("R", (), {"key": key})() for key in [b"a", b"b", b"a", None, b"\xff"]]
    span = Span("t", [0, 1, 2, 3, 4], ["i0", "i1", "i2", "i3", "i4"], size=50)
    span.chunk = type("C", (), {"records": records})()
    span.attempts, span.generation = 2, 7
    runs = span.by_key()
    assert [(run.key, run.indices, run.items, run.size) for run in runs] == [
        ("a", [0, 2], ["i0", "i2"], 20), ("b", [1], ["i1"], 10), ("", [3], ["i3"], 10),
        ("\udcff", [4], ["i4"], 10)]
    assert [(run.attempts, run.generation, run.chunk is span.chunk) for run in runs] == [(2, 7, True)] * 4
    piece = span.cut(1, 3)
    assert (piece.indices, piece.items, piece.size, piece.count) == ([1, 2], ["i1", "i2"], 20, 2)


async def test_revocation_with_a_slice_in_flight_commits_the_done_prefix_and_the_next_owner_resends_the_rest(
        broker, clock, processor_factory) -> None:
    first = SpanRecorder(gated="e2")
    second = SpanRecorder()
    produce(broker, 0, [("e0", "a"), ("e1", "b"), ("e2", "a"), ("e3", "c")])  # slices [e0 e1] [e2 e3]
    async with processor_factory(first, prepare_runs=span_of_events, revoke_grace=0.2, max_batch_items=2) as p1:
        await until(lambda: len(first.calls) == 2, clock, limit=10)  # the second slice is out, unanswered
        await until(lambda: broker.committed("g").get(P0) == 2, clock, limit=10)
        async with processor_factory(second, prepare_runs=span_of_events, revoke_grace=0.2) as p2:
            await until(lambda: p1.generation >= 1 and bool(p2.assigned), clock, limit=30)
            assert broker.committed("g").get(P0) == 2
            first.gate.set()  # the old owner's answer comes too late to count
            await until(lambda: broker.committed("g").get(P0) == 4, clock, limit=60)
            owner = p1 if P0 in p1.assigned else p2
            again = first.calls[2:] if owner is p1 else second.calls
    assert [ids for call in again for _, _, ids in call] == [["e2", "e3"]]
    assert [c[P0] for c in broker.commit_log("g") if P0 in c] == [2, 4]


async def test_without_the_lane_a_span_is_cut_by_key(broker, clock, processor_factory) -> None:
    deliver = SpanRecorder()
    produce(broker, 0, [("a0", "a"), ("b0", "b"), ("a1", "a")])
    async with processor_factory(deliver, prepare_runs=span_of_events, chunk_lane=False):
        await until(lambda: broker.committed("g") == {P0: 3}, clock)
    assert sorted(item for call in deliver.calls for item in call) == [
        ("Run", "a", ["a0", "a1"]), ("Run", "b", ["b0"])]


async def test_records_that_are_not_envelopes_are_dead_lettered_when_prepare_reads_no_value(
        broker, clock, processor_factory) -> None:
    calls: list[list[int]] = []

    async def deliver(target: Any, items: Sequence[Run]) -> Any:
        calls.append([index for item in items for index in item.indices])
        return DELIVERED

    produce(broker, 0, [("a0", "a")])
    broker.produce(TOPIC, 0, b"[1, 2]", key=b"b")  # JSON, not an envelope
    broker.produce(TOPIC, 0, None, key=b"c")  # type: ignore[arg-type]  # a tombstone: no value
    broker.produce(TOPIC, 0, orjson.dumps({"event_id": "x", "brand_id": ["1"]}), key=b"d")  # a wrong type
    produce(broker, 0, [("a4", "a")])
    writer = RecordingWriter()
    async with processor_factory(deliver, writer=writer, prepare_runs=lambda chunk: [chunk.span("t")]):
        await until(lambda: broker.committed("g") == {P0: 5}, clock)
    assert calls == [[0, 4]]
    assert [(letter.reason, letter.source_offset) for letter in writer.letters] == [
        ("malformed_message", 1), ("malformed_message", 2), ("malformed_message", 3)]


async def test_a_span_and_runs_of_another_partition_never_have_one_key_out_at_once(
        broker, clock, processor_factory) -> None:
    """Partition 0's chunks answered as spans, partition 1's as one Run a key: key a is in both."""
    deliver = SpanRecorder(gated="a0")

    def mixed(chunk: PolledChunk) -> list[Run]:
        if chunk.partition == P0:
            return span_of_events(chunk)
        return [Run(key.decode(), "t", indices, [chunk.payloads[i]["event_id"] for i in indices])
                for key, indices in chunk.by_key().items() if key is not None]

    produce(broker, 0, [("a0", "a"), ("b0", "b")])
    async with processor_factory(deliver, prepare_runs=mixed):
        await until(lambda: len(deliver.calls) == 1, clock, limit=5)
        produce(broker, 1, [("a1", "a"), ("c0", "c")])
        await until(lambda: "c0" in deliver.delivered, clock, limit=5)
        since = clock.now()
        await until(lambda: clock.now() - since >= 2, clock, limit=5)
        assert "a1" not in deliver.delivered
        deliver.gate.set()
        await until(lambda: broker.committed("g") == {P0: 2, P1: 2}, clock)
    assert [i for i in deliver.delivered if i.startswith("a")] == ["a0", "a1"]
    assert sorted(deliver.delivered) == ["a0", "a1", "b0", "c0"]
    p1_runs = [item for call in deliver.calls for item in call if item[0] == "Run"]
    assert sorted(p1_runs) == [("Run", "a", ["a1"]), ("Run", "c", ["c0"])]

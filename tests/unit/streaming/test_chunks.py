"""Chunk-native tracking: offsets by poll chunk, settled out of order and in part; prepare_many; a full
buffer that stops polling before it pauses. On the in-memory broker and the fake clock."""

from __future__ import annotations

import asyncio

from synergy_streaming import DELIVERED, Partition, PolledChunk, Reject, Retry, Run, Skip, Work
from synergy_streaming.local_broker import LocalBroker
from synergy_streaming.message import PolledSource
from synergy_streaming.offsets import OffsetTracker, RecordOffsets
from synergy_streaming.steps import ChunkPayloads, decode_chunk, decode_envelope

from tests.unit.streaming.conftest import TOPIC, Recorder, RecordingWriter, envelope, until

P0, P1 = Partition(TOPIC, 0), Partition(TOPIC, 1)


# --- the offset tracker alone ---------------------------------------------------------------------


def test_a_later_chunk_settled_first_commits_nothing_until_the_earlier_one_is_done() -> None:
    tracker = OffsetTracker()
    first = tracker.track_chunk("t", 0, [0, 1, 2, 3, 4], size=500)
    second = tracker.track_chunk("t", 0, [5, 6, 8, 9], size=400)  # offset 7: a transaction marker
    tracker.settle_many([(second, i) for i in range(4)])
    assert tracker.to_commit() == {}
    assert (tracker.outstanding, tracker.outstanding_bytes) == (5, 900)
    tracker.settle_many([(first, 0), (first, 1)])
    assert tracker.to_commit() == {("t", 0): 2}
    tracker.settle_many([(first, 4), (first, 2), (first, 3)])
    assert tracker.to_commit() == {("t", 0): 10}
    assert (tracker.outstanding, tracker.outstanding_bytes) == (0, 0)


def test_a_chunk_settled_in_part_commits_the_prefix_inside_it() -> None:
    tracker = OffsetTracker()
    chunk = tracker.track_chunk("t", 3, [10, 11, 12, 13, 14], size=50)
    tracker.settle_many([(chunk, 0), (chunk, 1), (chunk, 3)])
    assert tracker.to_commit() == {("t", 3): 12}
    tracker.committed({("t", 3): 12})
    tracker.settle("t", 3, chunk, 2)
    assert tracker.to_commit() == {("t", 3): 14}
    tracker.settle("t", 3, chunk, 4)
    assert tracker.to_commit() == {("t", 3): 15}
    assert (tracker.outstanding, tracker.outstanding_bytes) == (0, 0)


def test_settling_twice_or_after_the_partition_is_forgotten_changes_nothing() -> None:
    tracker = OffsetTracker()
    chunk = tracker.track_chunk("t", 0, [0, 1, 2, 3], size=40)
    assert tracker.settle_many([(chunk, 1), (chunk, 1)]) == 1
    tracker.forget([("t", 0)])  # revoked with the chunk half settled
    assert (tracker.outstanding, tracker.outstanding_bytes) == (0, 0)
    assert tracker.settle_many([(chunk, 0), (chunk, 2)]) == 0
    assert (tracker.outstanding, tracker.outstanding_bytes, tracker.to_commit()) == (0, 0, {})


class _Polled:
    """A consumer's record, as much of it as the tracker and PolledChunk read."""

    def __init__(self, offset: int, key: bytes | None = None) -> None:
        self.offset, self.key = offset, key


def test_slices_settled_fresh_commit_the_prefix_inside_their_chunk_and_a_later_settle_of_them_is_a_no_op() -> None:
    tracker = OffsetTracker()
    chunk = tracker.track_chunk("t", 0, RecordOffsets([_Polled(o) for o in (10, 11, 12, 14, 15, 16)]), size=60)
    a, b, c = Run("a", "x", [0, 2]), Run("b", "x", [1, 4]), Run("c", "x", [3, 5])
    a.chunk = b.chunk = c.chunk = chunk
    tracker.settle_fresh(chunk, [a], 2)
    assert tracker.to_commit() == {("t", 0): 11}  # 11 (index 1) is still out
    tracker.settle_fresh(chunk, [b], 2)
    assert tracker.to_commit() == {("t", 0): 13}  # then offset 14 (index 3)
    assert tracker.settle_runs([a, b]) == 0  # settled already: nothing moves twice
    assert (tracker.outstanding, tracker.outstanding_bytes) == (2, 60)
    tracker.settle_fresh(chunk, [c], 2)
    assert tracker.to_commit() == {("t", 0): 17}
    assert (tracker.outstanding, tracker.outstanding_bytes) == (0, 0)


def test_a_chunk_settled_fresh_whole_is_dropped_and_keeps_no_runs_alive() -> None:
    tracker = OffsetTracker()
    chunk = tracker.track_chunk("t", 0, RecordOffsets([_Polled(o) for o in (0, 1, 2)]), size=30)
    run = Run("a", "x", [0, 1, 2])
    run.chunk = chunk  # as the runtime sets it: the run and its chunk point at each other
    tracker.settle_fresh(chunk, [run], 3)
    assert tracker.to_commit() == {("t", 0): 3}
    assert chunk.fresh is None  # dropped: the reference cycle through its runs is broken
    assert (tracker.outstanding, tracker.outstanding_bytes) == (0, 0)


def test_polled_chunk_runs_are_one_a_key_in_offset_order_keyed_by_the_key_as_text() -> None:
    records = [_Polled(0, b"1:u1"), _Polled(1, b"1:u2"), _Polled(2, b"1:u1"), _Polled(3, None),
               _Polled(4, b"\xff\xfe")]
    runs = PolledChunk(P0, records, [None] * 5).runs("cio")
    assert [(run.key, run.target, run.indices, run.count) for run in runs] == [
        ("1:u1", "cio", [0, 2], 2), ("1:u2", "cio", [1], 1), ("", "cio", [3], 1),
        ("\udcff\udcfe", "cio", [4], 1),  # not UTF-8: kept apart from every other key, not an error
    ]
    only = PolledChunk(P0, records, [None] * 5, indices=[1, 2]).runs("cio")
    assert [(run.key, run.indices) for run in only] == [("1:u2", [1]), ("1:u1", [2])]


# --- the runtime --------------------------------------------------------------------------------------


async def test_revocation_while_a_chunk_is_half_settled_commits_its_prefix_and_the_new_owner_rereads_the_rest(
        broker: LocalBroker, clock, processor_factory) -> None:
    gate = asyncio.Event()
    first_calls: list[list[str]] = []

    async def first_deliver(target, items):
        ids = [i.payload for i in items]
        first_calls.append(ids)
        if "e2" in ids:
            await gate.wait()
        return DELIVERED

    for n in range(6):  # one poll, one chunk of partition 0
        broker.produce(TOPIC, 0, envelope(f"e{n}", f"u{n}"))
    second = Recorder()
    async with processor_factory(first_deliver, revoke_grace=0.2, max_batch_items=1, max_in_flight=6) as p1:
        await until(lambda: len(first_calls) == 6, clock, limit=10)
        await until(lambda: broker.committed("g").get(P0) == 2, clock, limit=10)
        async with processor_factory(second, revoke_grace=0.2) as p2:
            await until(lambda: p1.generation >= 1 and bool(p2.assigned), clock, limit=30)
            assert broker.committed("g").get(P0) == 2  # e3..e5 were delivered, but e2 holds the prefix
            gate.set()  # the old owner's answer for e2 comes too late to count
            await until(lambda: broker.committed("g").get(P0) == 6, clock, limit=60)
            deliveries = first_calls[6:] if P0 in p1.assigned else second.calls
    assert sorted(i for call in deliveries for i in call) == ["e2", "e3", "e4", "e5"]
    assert [c[P0] for c in broker.commit_log("g") if P0 in c] == [2, 6]


async def test_prepare_many_is_called_once_a_chunk_with_skips_and_rejects_among_its_answers(
        broker: LocalBroker, clock, processor_factory) -> None:
    chunks: list[list[int]] = []

    def prepare_many(sources):
        chunks.append([s.record.offset for s in sources])
        answers: list[object] = []
        for s in sources:
            event_id = s.payload["event_id"]
            if event_id == "skip":
                answers.append(Skip("not_for_us"))
            elif event_id == "bad":
                answers.append(Reject("unmappable", "no user"))
            else:
                answers.append(Work(key=s.payload["identifiers"]["id"], target="t", payload=event_id))
        return answers

    for event_id in ["e0", "skip", "bad", "e1", "e2"]:
        broker.produce(TOPIC, 0, envelope(event_id, "a"))
    broker.produce(TOPIC, 1, envelope("e3", "b"))
    writer = RecordingWriter()
    recorder = Recorder()
    async with processor_factory(recorder, writer=writer, prepare_many=prepare_many):
        await until(lambda: broker.committed("g") == {P0: 5, P1: 1}, clock)
    assert sorted(chunks) == [[0], [0, 1, 2, 3, 4]]
    assert [i for i in recorder.delivered if i != "e3"] == ["e0", "e1", "e2"]
    assert "e3" in recorder.delivered
    assert [(letter.reason, letter.source_offset) for letter in writer.letters] == [("unmappable", 2)]


async def test_a_prepare_many_that_fails_has_its_chunk_prepared_one_by_one_and_only_the_bad_record_dead_lettered(
        broker: LocalBroker, clock, processor_factory) -> None:
    def prepare(source):
        if source.payload["event_id"] == "poison":
            raise KeyError("no identifiers")
        return [Work(key="a", target="t", payload=source.payload["event_id"])]

    def prepare_many(sources):
        return [prepare(s)[0] for s in sources]

    for event_id in ["e0", "poison", "e1"]:
        broker.produce(TOPIC, 0, envelope(event_id, "a"))
    writer = RecordingWriter()
    recorder = Recorder()
    async with processor_factory(recorder, prepare=prepare, writer=writer, prepare_many=prepare_many):
        await until(lambda: broker.committed("g").get(P0) == 3, clock)
    assert recorder.delivered == ["e0", "e1"]
    assert [(letter.reason, letter.source_offset) for letter in writer.letters] == [("prepare_failed", 1)]


async def test_a_retryable_failure_of_prepare_many_is_retried_and_nothing_is_lost(
        broker: LocalBroker, clock, processor_factory) -> None:
    failures = {"left": 3}

    def prepare_many(sources):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("database away")
        return [Work(key=s.payload["identifiers"]["id"], target="t", payload=s.payload["event_id"])
                for s in sources]

    for n in range(4):
        broker.produce(TOPIC, 0, envelope(f"e{n}", f"u{n}"))
    recorder = Recorder()
    async with processor_factory(recorder, prepare_many=prepare_many):
        await until(lambda: broker.committed("g").get(P0) == 4, clock, limit=300)
    assert failures["left"] == 0
    assert sorted(recorder.delivered) == ["e0", "e1", "e2", "e3"]


async def test_a_full_buffer_stops_polling_at_once_and_pauses_only_when_it_stays_full(
        broker: LocalBroker, clock, processor_factory) -> None:
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    for n in range(40):
        broker.produce(TOPIC, n % 2, envelope(f"e{n}", f"u{n}"))
    async with processor_factory(recorder, max_buffered=10, max_poll_records=4, max_in_flight=1,
                                 pause_after=2.0) as processor:
        consumer = processor.consumer
        await until(lambda: processor.commits.tracker.outstanding >= 10, clock, limit=2)
        await clock.advance(1.0)
        assert 10 <= processor.commits.tracker.outstanding <= 13  # one poll past the limit at most
        assert not processor.paused and consumer.paused == set()  # type: ignore[attr-defined]
        await until(lambda: processor.paused, clock, limit=3)
        assert consumer.paused == {P0, P1}  # type: ignore[attr-defined]
        gate.set()
        await until(lambda: broker.committed("g") == {P0: 20, P1: 20}, clock)
        assert not processor.paused and consumer.paused == set()  # type: ignore[attr-defined]
    assert sorted(recorder.delivered) == sorted(f"e{n}" for n in range(40))


async def test_the_buffer_is_bounded_by_bytes_too(broker: LocalBroker, clock, processor_factory) -> None:
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    padding = "x" * 1000
    for n in range(20):
        broker.produce(TOPIC, 0, envelope(f"e{n}", f"u{n}", padding=padding))
    async with processor_factory(recorder, max_buffered_bytes=3000, max_poll_records=2,
                                 max_in_flight=1) as processor:
        await until(lambda: processor.commits.tracker.outstanding_bytes >= 3000, clock, limit=2)
        await clock.advance(0.5)
        assert processor.commits.tracker.outstanding == 4  # two polls of two ~1 kB records
        gate.set()
        await until(lambda: broker.committed("g").get(P0) == 20, clock)
    assert sorted(recorder.delivered, key=lambda i: int(i[1:])) == [f"e{n}" for n in range(20)]


async def test_while_deliveries_flow_it_reads_ahead_only_what_refills_them(
        broker: LocalBroker, clock, processor_factory) -> None:
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    for n in range(40):
        broker.produce(TOPIC, 0, envelope(f"e{n}", f"u{n}"))
    async with processor_factory(recorder, max_batch_items=2, max_in_flight=1, max_poll_records=2,
                                 read_ahead=6, max_batch_wait=0.01) as processor:
        await until(lambda: len(recorder.calls) == 1, clock, limit=5)
        await clock.advance(2.0)
        # two in the delivery that hangs, six read ahead; far from max_buffered, and nothing paused
        assert processor.commits.tracker.outstanding == 8
        assert not processor.paused
        gate.set()
        await until(lambda: broker.committed("g").get(P0) == 40, clock)
    assert sorted(recorder.delivered, key=lambda i: int(i[1:])) == [f"e{n}" for n in range(40)]


async def test_a_retrying_key_lifts_the_read_ahead_so_other_keys_flow_past_it(
        broker: LocalBroker, clock, processor_factory) -> None:
    def answer(ids):
        return Retry("503", retry_after=1000) if "a0" in ids else DELIVERED

    recorder = Recorder(answer=answer)
    for n in range(10):  # a0 will wait for its retry, a1..a9 behind it
        broker.produce(TOPIC, 0, envelope(f"a{n}", "a"))
    for n in range(20):
        broker.produce(TOPIC, 0, envelope(f"b{n}", f"b{n}"))
    async with processor_factory(recorder, max_batch_items=2, max_in_flight=1, max_poll_records=2,
                                 read_ahead=4, max_run_per_key=1, max_batch_wait=0.01):
        await until(lambda: all(f"b{n}" in recorder.delivered for n in range(20)), clock, limit=60)
        assert [i for i in recorder.delivered if i.startswith("a")] == ["a0"]
        assert broker.committed("g").get(P0) is None  # a0 holds the partition's prefix


# --- the envelope checks, inlined on each hot path, answer as decode_envelope does ------------------

EDGE_VALUES = [
    b'{"event_id": "e0", "brand_id": "1"}',  # 0: an envelope
    b"{not json",  # 1
    b"[1, 2]",  # 2: JSON, not an object
    b"null",  # 3
    None,  # 4: a tombstone
    b'{"event_id": "e5"}',  # 5: no brand_id
    b'{"event_id": "", "brand_id": "1"}',  # 6: an empty id
    b'{"event_id": "e7", "brand_id": ["1"]}',  # 7: a wrong type
    b'{"event_id": 8, "brand_id": 1}',  # 8: integer ids are ids
    b'{"event_id": 0, "brand_id": "1"}',  # 9: a zero id is no id
    b'{"event_id": "e10", "brand_id": 1.5}',  # 10: a float is not an id
]
NOT_ENVELOPES = [1, 2, 3, 4, 5, 6, 7, 9, 10]


def test_the_per_record_and_run_paths_refuse_exactly_what_decode_envelope_refuses() -> None:
    sources = [PolledSource(P0, offset, None, value) for offset, value in enumerate(EDGE_VALUES)]
    refused = decode_chunk(sources, decode_envelope)  # type: ignore[arg-type]
    assert [source.offset for source, _ in refused] == NOT_ENVELOPES
    assert {exc.reason for _, exc in refused} == {"malformed_message"}
    assert [source.payload for source in sources if source.offset in (0, 8)] == [
        {"event_id": "e0", "brand_id": "1"}, {"event_id": 8, "brand_id": 1}]

    read_each = ChunkPayloads(P0, sources, None, decode_envelope)
    assert [index for index in range(len(EDGE_VALUES)) if read_each[index] is None] == NOT_ENVELOPES
    assert [index for index, _ in read_each.finish(None)] == NOT_ENVELOPES
    read_none = ChunkPayloads(P0, sources, None, decode_envelope)  # the one-pass check after prepare
    assert sorted(index for index, _ in read_none.finish(None)) == NOT_ENVELOPES
    assert read_none.finish(None) == []  # each reported once

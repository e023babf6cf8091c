"""The runtime on the in-memory broker: commit order, per-key order, retry, rebalance, DLQ, brake."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from synergy_streaming import (
    DELIVERED,
    DlqBrake,
    Failed,
    Partition,
    Record,
    Retry,
    SplitBatch,
    Undecodable,
    Work,
    decode_envelope,
)
from synergy_streaming.local_broker import LocalBroker

from tests.unit.streaming.conftest import TOPIC, Recorder, RecordingWriter, by_user, envelope, until
from tests.unit.streaming.test_runs import RunRecorder, runs_by_user

P0, P1 = Partition(TOPIC, 0), Partition(TOPIC, 1)


async def test_commits_only_the_done_prefix_while_a_message_is_in_flight(broker: LocalBroker, clock,
                                                                         processor_factory) -> None:
    # e1 (user a) hangs in flight; e2, e3 (users b, c) are delivered. Nothing may be committed past e1.
    gate = asyncio.Event()
    hanging = Recorder()

    async def deliver(target, items):
        ids = [i.payload for i in items]
        hanging.calls.append(ids)
        if "e1" in ids:
            await gate.wait()
        return DELIVERED

    for event_id, user in [("e1", "a"), ("e2", "b"), ("e3", "c")]:
        broker.produce(TOPIC, 0, envelope(event_id, user))
    async with processor_factory(deliver, max_batch_items=1, max_in_flight=3):
        await until(lambda: sorted(hanging.delivered) == ["e1", "e2", "e3"], clock)
        await clock.advance(5)  # several commit intervals
        assert broker.committed("g").get(P0) is None
        gate.set()
        await until(lambda: broker.committed("g").get(P0) == 3, clock)
    assert [c[P0] for c in broker.commit_log("g") if P0 in c] == [3]


async def test_a_key_has_one_run_in_flight_and_keeps_its_order(broker: LocalBroker, clock,
                                                               processor_factory) -> None:
    for n in range(6):
        broker.produce(TOPIC, 0, envelope(f"a{n}", "a"))
    broker.produce(TOPIC, 0, envelope("b0", "b"))
    recorder = Recorder()
    async with processor_factory(recorder, max_run_per_key=2, max_batch_items=10):
        await until(lambda: len(recorder.delivered) == 7, clock)
    a_calls = [[i for i in call if i.startswith("a")] for call in recorder.calls]
    assert [i for call in a_calls for i in call] == ["a0", "a1", "a2", "a3", "a4", "a5"]
    assert max(len(c) for c in a_calls) == 2
    assert "b0" in recorder.calls[0]


async def test_a_retry_holds_back_only_its_key_and_then_delivers(broker: LocalBroker, clock,
                                                                 processor_factory) -> None:
    failures = {"a0": 2}

    def answer(ids):
        if ids == ["a0"] and failures["a0"]:
            failures["a0"] -= 1
            return Retry("503", retry_after=10)
        return DELIVERED

    recorder = Recorder(answer=answer)
    broker.produce(TOPIC, 0, envelope("a0", "a"))
    broker.produce(TOPIC, 0, envelope("a1", "a"))
    broker.produce(TOPIC, 1, envelope("b0", "b"))
    async with processor_factory(recorder, max_batch_items=1, max_run_per_key=1):
        await until(lambda: "b0" in recorder.delivered, clock, limit=5)
        assert "a1" not in recorder.delivered
        await until(lambda: broker.committed("g").get(P0) == 2, clock)
    assert recorder.calls.count(["a0"]) == 3
    assert recorder.delivered.index("a1") > max(i for i, c in enumerate(recorder.calls) if c == ["a0"])
    assert broker.committed("g") == {P0: 2, P1: 1}


async def test_undecodable_records_are_dead_lettered_and_the_partition_goes_on(
        broker: LocalBroker, clock, processor_factory) -> None:
    writer = RecordingWriter(fail=2)  # the first two writes fail and are retried
    broker.produce(TOPIC, 0, b"not json", key=b"k\x00ey", headers=[("name", b"x\x00y")])
    broker.produce(TOPIC, 0, b"[1, 2]")
    broker.produce(TOPIC, 0, envelope("e1", "a"))
    recorder = Recorder()
    async with processor_factory(recorder, writer=writer):
        await until(lambda: broker.committed("g").get(P0) == 3, clock)
    assert recorder.delivered == ["e1"]
    assert [(letter.reason, letter.source_offset) for letter in writer.letters] == [
        ("malformed_message", 0), ("malformed_message", 1)]
    assert writer.letters[0].service == "test"
    assert writer.letters[0].key == b"k\x00ey"


async def test_a_refused_batch_is_bisected_to_its_bad_item(broker: LocalBroker, clock,
                                                           processor_factory) -> None:
    def answer(ids):
        return SplitBatch("400", "bad request") if "bad" in ids else DELIVERED

    writer = RecordingWriter()
    recorder = Recorder(answer=answer)
    for n, event_id in enumerate(["e0", "e1", "bad", "e3", "e4"]):
        broker.produce(TOPIC, 0, envelope(event_id, f"u{n}"))
    async with processor_factory(recorder, writer=writer, max_batch_items=5, max_batch_wait=1.0):
        await until(lambda: broker.committed("g").get(P0) == 5, clock)
    assert recorder.calls[0] == ["e0", "e1", "bad", "e3", "e4"]
    delivered_alone = [c for c in recorder.calls if "bad" not in c]
    assert sorted(i for c in delivered_alone for i in c) == ["e0", "e1", "e3", "e4"]
    assert [(letter.reason, letter.source_offset) for letter in writer.letters] == [("400", 2)]


async def test_an_exception_from_deliver_that_is_not_retryable_isolates_the_poison_record(
        broker: LocalBroker, clock, processor_factory) -> None:
    written: list[str] = []

    async def deliver(target, items):
        ids = [i.payload for i in items]
        if "poison" in ids:
            raise ValueError("invalid byte sequence for encoding UTF8: 0x00")
        written.extend(ids)
        return DELIVERED

    writer = RecordingWriter()
    for n, event_id in enumerate(["e0", "poison", "e2", "e3"]):
        broker.produce(TOPIC, 0, envelope(event_id, f"u{n}"))
    async with processor_factory(deliver, writer=writer, max_batch_items=4, max_batch_wait=1.0):
        await until(lambda: broker.committed("g").get(P0) == 4, clock)
    assert sorted(written) == ["e0", "e2", "e3"]
    assert [letter.reason for letter in writer.letters] == ["error:ValueError"]


async def test_a_retryable_exception_is_retried_not_dead_lettered(broker: LocalBroker, clock,
                                                                  processor_factory) -> None:
    attempts: list[str] = []

    async def deliver(target, items):
        attempts.append(items[0].payload)
        if len(attempts) < 3:
            raise ConnectionResetError("database went away")
        return DELIVERED

    writer = RecordingWriter()
    broker.produce(TOPIC, 0, envelope("e0", "a"))
    async with processor_factory(deliver, writer=writer):
        await until(lambda: broker.committed("g").get(P0) == 1, clock)
    assert attempts == ["e0", "e0", "e0"]
    assert writer.letters == []


async def test_backpressure_pauses_consumption_instead_of_buffering(broker: LocalBroker, clock,
                                                                    processor_factory) -> None:
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    for n in range(50):
        broker.produce(TOPIC, 0, envelope(f"e{n}", f"u{n}"))
    async with processor_factory(recorder, max_buffered=10, max_poll_records=5, max_in_flight=1) as processor:
        await until(lambda: processor.paused, clock, limit=5)
        consumer = processor.consumer
        assert consumer.paused == {P0, P1}  # type: ignore[attr-defined]
        assert processor.commits.tracker.outstanding <= 15
        gate.set()
        await until(lambda: broker.committed("g").get(P0) == 50, clock)
    assert sorted(recorder.delivered, key=lambda i: int(i[1:])) == [f"e{n}" for n in range(50)]


async def test_a_rebalance_mid_batch_drops_the_late_answer_and_the_new_owner_redelivers(
        broker: LocalBroker, clock, processor_factory) -> None:
    gate = asyncio.Event()
    first = Recorder(gate=gate)
    second = Recorder()
    for n in range(4):
        broker.produce(TOPIC, n % 2, envelope(f"e{n}", f"u{n}"))
    async with processor_factory(first, revoke_grace=0.2, max_batch_items=10, max_batch_wait=0.01) as p1:
        await until(lambda: len(first.calls) >= 1, clock, limit=5)
        in_flight = sorted(first.delivered)
        async with processor_factory(second, revoke_grace=0.2) as p2:
            # the second member joins: p1 is revoked while its batch is still in flight
            await until(lambda: p1.generation >= 1 and bool(p2.assigned), clock, limit=30)
            gate.set()
            await until(lambda: len(broker.committed("g")) == 2 and all(
                v == 2 for v in broker.committed("g").values()), clock, limit=60)
            owned = {p: ("p1" if p in p1.assigned else "p2") for p in (P0, P1)}
    assert in_flight == ["e0", "e1", "e2", "e3"]
    # every record was delivered by whoever owned its partition after the rebalance
    redelivered = set(first.delivered[len(in_flight):]) | set(second.delivered)
    assert redelivered == {"e0", "e1", "e2", "e3"}
    assert set(owned.values()) == {"p1", "p2"}


async def test_a_late_answer_after_revocation_commits_nothing_for_the_old_owner(
        broker: LocalBroker, clock, processor_factory) -> None:
    gate = asyncio.Event()
    first = Recorder(gate=gate)
    broker.produce(TOPIC, 0, envelope("e0", "a"))
    broker.produce(TOPIC, 1, envelope("e1", "b"))
    async with processor_factory(first, revoke_grace=0.1, max_batch_items=1) as p1:
        await until(lambda: len(first.calls) == 2, clock, limit=5)
        async with processor_factory(Recorder(), revoke_grace=0.1) as p2:
            await until(lambda: p1.generation == 1 and bool(p2.assigned) and bool(p1.assigned), clock, limit=30)
            gate.set()  # p1's answers for the old generation arrive now
            await until(lambda: broker.committed("g") == {P0: 1, P1: 1}, clock, limit=60)
    assert broker.foreign_commits == []
    assert broker.commit_log("g") == [{P0: 1}, {P1: 1}] or broker.commit_log("g") == [{P1: 1}, {P0: 1}]


async def test_hot_key_backlog_is_parked_to_the_dlq(broker: LocalBroker, clock, processor_factory) -> None:
    def answer(ids):
        return Retry("503", retry_after=1000) if "h0" in ids else DELIVERED

    writer = RecordingWriter()
    recorder = Recorder(answer=answer)
    broker.produce(TOPIC, 0, envelope("h0", "hot"))
    async with processor_factory(recorder, writer=writer, max_pending_per_key=3, max_run_per_key=1):
        await until(lambda: recorder.calls == [["h0"]], clock, limit=20)
        for n in range(1, 6):  # arrive while h0 waits for its retry
            broker.produce(TOPIC, 0, envelope(f"h{n}", "hot"))
        broker.produce(TOPIC, 0, envelope("c0", "cold"))
        await until(lambda: "c0" in recorder.delivered and len(writer.letters) == 5, clock, limit=20)
        assert broker.committed("g").get(P0) is None  # h0 still holds the partition's prefix
    assert [letter.reason for letter in writer.letters] == ["hot_key_parked"] * 5
    assert sorted(letter.source_offset for letter in writer.letters) == [1, 2, 3, 4, 5]


async def test_the_brake_engages_on_a_flood_holds_and_releases_when_the_target_recovers(
        broker: LocalBroker, clock, processor_factory) -> None:
    healthy = {"ok": False}
    accepted: list[str] = []

    def answer(ids):
        if healthy["ok"]:
            accepted.extend(ids)
            return DELIVERED
        return [Failed("invalid_item", "misconfigured")] * len(ids)

    writer = RecordingWriter()
    recorder = Recorder(answer=answer)
    for n in range(30):
        broker.produce(TOPIC, 0, envelope(f"e{n}", f"u{n}"))
    brake = DlqBrake(max_consecutive=5, window=100, retry_interval=10)
    async with processor_factory(recorder, writer=writer, brake=brake, max_batch_items=1) as processor:
        await until(lambda: brake.engaged, clock, limit=20)
        assert processor.readiness() == {"dlq_brake_released": False}
        await clock.advance(3)
        assert processor.paused
        assert len(writer.letters) == 4  # the fifth tripped the brake and was held, not written
        healthy["ok"] = True
        await until(lambda: broker.committed("g").get(P0) == 30, clock, limit=60)
        assert not brake.engaged
        assert processor.readiness() == {"dlq_brake_released": True}
    dead = {letter.event_id for letter in writer.letters}
    assert dead == {"e0", "e1", "e2", "e3"}
    assert sorted(accepted) == sorted(f"e{n}" for n in range(4, 30))


async def test_a_failed_commit_is_retried_and_the_offsets_still_land(broker: LocalBroker, clock,
                                                                     processor_factory) -> None:
    broker.produce(TOPIC, 1, envelope("e0", "a"))
    recorder = Recorder()
    async with processor_factory(recorder) as processor:
        processor.consumer.fail_commits = 2  # type: ignore[attr-defined]
        await until(lambda: broker.committed("g").get(P1) == 1, clock)


async def test_a_replayed_letter_of_another_service_is_skipped(broker: LocalBroker, clock,
                                                               processor_factory) -> None:
    broker.produce(TOPIC, 0, envelope("mine", "a"), headers=[("dlq_replay_for", b"test")])
    broker.produce(TOPIC, 0, envelope("theirs", "b"), headers=[("dlq_replay_for", b"dispatcher")])
    recorder = Recorder()
    async with processor_factory(recorder):
        await until(lambda: broker.committed("g").get(P0) == 2, clock)
    assert recorder.delivered == ["mine"]


async def test_a_record_fans_out_and_commits_once_every_item_is_settled(broker: LocalBroker, clock,
                                                                        processor_factory) -> None:
    def fan_out(source):
        event_id = source.payload["event_id"]
        return [Work(key=f"{d}:a", target=d, payload=f"{event_id}@{d}") for d in ("hook", "posthog")]

    gate = asyncio.Event()

    async def deliver(target, items):
        if target == "posthog":
            await gate.wait()
        return DELIVERED

    broker.produce(TOPIC, 0, envelope("e0", "a"))
    async with processor_factory(deliver, prepare=fan_out):
        await clock.advance(3)
        assert broker.committed("g").get(P0) is None
        gate.set()
        await until(lambda: broker.committed("g").get(P0) == 1, clock)


def test_envelope_fixture_is_json() -> None:
    assert orjson.loads(envelope("e", "u"))["identifiers"] == {"id": "u"}


async def test_a_failure_exempt_from_the_brake_is_dead_lettered_and_reported(broker: LocalBroker, clock,
                                                                            processor_factory) -> None:
    def answer(ids):
        return [Failed("destination_disabled", "410 Gone", counts_for_brake=False)] * len(ids)

    writer = RecordingWriter()
    reported: list[tuple[str | None, str]] = []
    for n in range(12):
        broker.produce(TOPIC, 0, envelope(f"e{n}", f"u{n}"))
    brake = DlqBrake(max_consecutive=3)
    async with processor_factory(Recorder(answer=answer), writer=writer, brake=brake) as processor:
        processor._on_dead_letter = lambda work, letter: reported.append(  # the hook a service passes
            (work.payload if work else None, letter.reason))
        await until(lambda: broker.committed("g").get(P0) == 12, clock)
    assert not brake.engaged
    assert len(writer.letters) == 12
    assert sorted(reported) == sorted((f"e{n}", "destination_disabled") for n in range(12))


def ids_only(record: Record) -> dict[str, Any]:
    """A service's own decoder: only the fields it reads, its own refusal besides the runtime's."""
    envelope = decode_envelope(record)
    if type(envelope.get("identifiers")) is not dict:
        raise Undecodable("malformed_message", "no identifiers")
    return {"event_id": envelope["event_id"], "identifiers": envelope["identifiers"]}


@pytest.mark.parametrize("mode", ["prepare", "prepare_many", "prepare_runs"])
async def test_a_services_decoder_refusals_are_dead_lettered_as_undecodable_json_is(
        broker: LocalBroker, clock, processor_factory, mode: str) -> None:
    broker.produce(TOPIC, 0, b"not json")
    broker.produce(TOPIC, 0, b"[1, 2]")
    broker.produce(TOPIC, 0, envelope("e2", "a", context={"ip": "1.2.3.4"}))
    broker.produce(TOPIC, 0, orjson.dumps({"event_id": "e3", "brand_id": "1"}))
    broker.produce(TOPIC, 0, envelope("e4", "b"))
    writer = RecordingWriter()
    if mode == "prepare_runs":
        recorder: Any = RunRecorder()
        factory = processor_factory(recorder, writer=writer, decode=ids_only, prepare_runs=runs_by_user)
    else:
        recorder = Recorder()
        many = {"prepare_many": lambda sources: [by_user(source) for source in sources]}
        factory = processor_factory(recorder, writer=writer, decode=ids_only, **(many if mode == "prepare_many" else {}))
    async with factory:
        await until(lambda: broker.committed("g").get(P0) == 5, clock)
    assert recorder.delivered == ["e2", "e4"]
    letters = [(letter.reason, letter.source_offset, letter.detail[:9]) for letter in writer.letters]
    assert letters == [("malformed_message", 0, "not JSON:"), ("malformed_message", 1, "not a JSO"),
                       ("malformed_message", 3, "no identi")]
    assert writer.letters[1].detail == "not a JSON object but list"
    assert writer.letters[2].value == b'{"event_id":"e3","brand_id":"1"}'

"""The pure parts of the runtime: batch packing, the DLQ brake, the dead-letter row and headers."""

from __future__ import annotations

from datetime import UTC, datetime

from synergy_streaming import DlqBrake, Work
from synergy_streaming.dlq import DeadLetter, replay_message
from synergy_streaming.steps import BatchByTarget


def _run(key: str, target: str, sizes: list[int]) -> tuple[str, list[Work]]:
    return key, [Work(key=key, target=target, payload=f"{key}{n}", size=size) for n, size in enumerate(sizes)]


def test_pack_groups_by_target_and_never_splits_a_run_across_batches() -> None:
    packer = BatchByTarget(max_items=3, max_bytes=100)
    batches = packer.pack([_run("a", "x", [10, 10]), _run("b", "y", [10]), _run("c", "x", [10, 10])])
    shape = [(target, [(key, [w.payload for w in run]) for key, run in groups]) for target, groups in batches]
    assert shape == [
        ("x", [("a", ["a0", "a1"])]),
        ("x", [("c", ["c0", "c1"])]),
        ("y", [("b", ["b0"])]),
    ]


def test_pack_cuts_a_run_at_the_byte_budget() -> None:
    packer = BatchByTarget(max_items=10, max_bytes=25)
    batches = packer.pack([_run("a", "x", [10, 10, 10])])
    assert [[w.payload for _, run in groups for w in run] for _, groups in batches] == [["a0", "a1"]]


def test_brake_engages_on_a_run_of_dead_letters_and_releases_when_a_held_item_succeeds() -> None:
    brake = DlqBrake(max_share=0.5, window=10, max_consecutive=3)
    assert [brake.may_dead_letter() for _ in range(3)] == [True, True, False]
    assert brake.engaged
    assert brake.may_dead_letter() is False
    brake.succeeded()  # another key's item: the cause may still be there
    assert brake.engaged
    brake.succeeded(was_held=True)  # a held item went through on its retry
    assert not brake.engaged
    assert brake.may_dead_letter() is True  # counting starts afresh


def test_brake_engages_on_the_share_of_a_full_window() -> None:
    brake = DlqBrake(max_share=0.5, window=10, max_consecutive=100)
    for _ in range(4):
        brake.succeeded()
    answers = [brake.may_dead_letter() for _ in range(6)]
    # the window is full at the tenth item, and 6 of its 10 would be dead letters: over half
    assert answers == [True, True, True, True, True, False]


def test_the_dead_letter_row_escapes_nul_and_headers_carry_the_one_schema() -> None:
    letter = DeadLetter(
        reason="malformed_message", detail="bad\x00detail", service="cio-sink", source_topic="synergy.events.v1",
        source_partition=3, source_offset=42, key=b"1:u\x00", value=b"\x00raw",
        headers=[("name", b"a\x00b"), ("dlq_reason", b"old")], attempts=2,
        first_attempt_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC), destination="webhook:7", brand_id="1",
        event_id="01J0000000000000000000000\x00",
    )
    row = letter.row()
    assert row[2] == "bad\\u0000detail"
    assert row[8] == "1:u\\u0000"
    assert row[9] == b"\x00raw"
    assert row[10] == [["name", "a\\u0000b"], ["dlq_reason", "old"]]
    assert row[4] == "01J0000000000000000000000\\u0000"
    assert dict(letter.kafka_headers()) == {
        "name": b"a\x00b",
        "dlq_reason": b"malformed_message",
        "dlq_detail": b"bad\x00detail",
        "dlq_service": b"cio-sink",
        "dlq_destination": b"webhook:7",
        "dlq_source_topic": b"synergy.events.v1",
        "dlq_source_partition": b"3",
        "dlq_source_offset": b"42",
        "dlq_attempts": b"2",
        "dlq_first_attempt_at": b"2026-12-01T09:00:00+00:00",
    }


def test_a_replay_goes_back_to_its_source_topic_for_its_own_service() -> None:
    message = replay_message({"id": 9, "service": "dispatcher", "destination": "webhook:7",
                              "source_topic": "synergy.events.v1", "message_key": "1:u", "payload": b"{}",
                              "headers": [["name", "x"], ["dlq_reason", "old"]]})
    assert message.topic == "synergy.events.v1"
    assert message.key == "1:u"
    assert list(message.headers) == [("name", b"x"), ("dlq_replay_for", b"dispatcher"),
                                     ("dlq_replay_destination", b"webhook:7"), ("dlq_replay_of", b"9")]

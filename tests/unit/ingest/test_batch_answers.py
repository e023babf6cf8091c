"""What a batch is answered, from its validation errors and what Kafka did with its valid events."""

from __future__ import annotations

from synergy_ingest.answers import batch_answer, unwritten_problem
from synergy_ingest.publish_outcome import PublishOutcome

EVENTS = [(0, "01A"), (2, "01B"), (3, "01C")]  # index 1 was invalid
ERRORS = [{"index": 1, "field": "name", "message": "unknown event"}]


def test_all_valid_and_written_is_the_routes_ok_status() -> None:
    written = PublishOutcome(written=[0, 1, 2])
    events = [(0, "01A"), (1, "01B"), (2, "01C")]
    assert batch_answer(events, [], 0, written, 202) == (
        202,
        {
            "accepted": [
                {"index": 0, "event_id": "01A"},
                {"index": 1, "event_id": "01B"},
                {"index": 2, "event_id": "01C"},
            ],
            "errors": [],
        },
    )
    assert batch_answer(events, [], 0, written, 200)[0] == 200


def test_some_written_is_207_naming_which_indexes_were_written_and_which_not() -> None:
    published = PublishOutcome(written=[0], refused=[2], unknown=[1])
    assert batch_answer(EVENTS, ERRORS, 0, published, 202) == (
        207,
        {
            "accepted": [{"index": 0, "event_id": "01A"}],
            "errors": ERRORS,
            "unwritten": [
                {"index": 2, "event_id": "01B", "outcome": "unknown"},
                {"index": 3, "event_id": "01C", "outcome": "not_written"},
            ],
        },
    )


def test_none_written_with_some_unknown_is_503_listing_the_ids_to_resend() -> None:
    published = PublishOutcome(refused=[0], unknown=[1, 2], reason="timed out")
    status, body = batch_answer(EVENTS, ERRORS, 0, published, 202)
    assert status == 503
    assert body["outcome"] == "unknown"
    assert body["event_ids"] == ["01B", "01C"]
    assert body["accepted"] == []
    assert body["unwritten"] == [
        {"index": 0, "event_id": "01A", "outcome": "not_written"},
        {"index": 2, "event_id": "01B", "outcome": "unknown"},
        {"index": 3, "event_id": "01C", "outcome": "unknown"},
    ]


def test_none_written_for_certain_is_503_without_outcome() -> None:
    published = PublishOutcome(refused=[0, 1, 2], reason="the producer's queue is full")
    status, body = batch_answer(EVENTS, [], 0, published, 202)
    assert status == 503
    assert "outcome" not in body
    assert "event_ids" not in body
    assert body["detail"] == "nothing was accepted; retry later (the producer's queue is full)"


def test_nothing_valid_is_422_or_403_when_every_error_is_a_foreign_brand() -> None:
    status, body = batch_answer([], ERRORS, 0, None, 202)
    assert (status, body["field"], body["accepted"]) == (422, "batch[1].name", [])
    forbidden = [{"index": 0, "field": "brand_id", "message": "this write key does not act for that brand"}]
    assert batch_answer([], forbidden, 1, None, 202)[0] == 403


def test_a_single_event_problem() -> None:
    assert unwritten_problem(PublishOutcome(unknown=[0]), ["01A"])["event_ids"] == ["01A"]
    assert "event_ids" not in unwritten_problem(PublishOutcome(refused=[0], reason="x"), ["01A"])

"""Events the worker must refuse rather than apply (issue 15 point 6): wrong types in the envelope, and data
that makes the rules raise. Pure: no Kafka."""

from __future__ import annotations

from typing import Any

import pytest
from synergy_achievements.processing import LoyaltyProcessor, envelope_problem
from synergy_achievements.rules import default_rules
from synergy_achievements.state import UserState

RULES = default_rules()
EventFactory = Any


def test_a_seed_scan_as_ingest_writes_it_has_no_problem(scan: EventFactory) -> None:
    assert envelope_problem(scan("01HZX0000000000000000000A1")) is None


@pytest.mark.parametrize(("change", "problem"), [
    ({"brand_id": 7}, "brand_id must be a non-empty string, got int '7'"),
    ({"brand_id": ""}, "brand_id must be a non-empty string, got str ''"),
    ({"event_id": None}, "event_id must be a non-empty string, got nothing"),
    ({"event_id": 12345}, "event_id must be a non-empty string, got int '12345'"),
    ({"timestamp": 1716402912}, "timestamp must be a non-empty string, got int '1716402912'"),
    ({"timestamp": "yesterday"}, "timestamp is not an ISO 8601 time: 'yesterday'"),
    ({"identifiers": {"id": 42}}, "identifiers.id must be a string, got int '42'"),
    ({"identifiers": {"anonymous_id": ["a"]}}, "identifiers.anonymous_id must be a string, got list \"['a']\""),
    ({"identifiers": "user-1"}, "identifiers must be an object, got str 'user-1'"),
    ({"name": 5}, "name must be a string, got int '5'"),
    ({"correlation_id": 99}, "correlation_id must be a string, got int '99'"),
    ({"data": [1, 2]}, "data must be an object, got list '[1, 2]'"),
])
def test_a_field_of_the_wrong_type_is_named(scan: EventFactory, change: dict[str, Any], problem: str) -> None:
    assert envelope_problem({**scan("01HZX0000000000000000000A1"), **change}) == problem


def test_a_value_that_is_not_an_object_is_refused() -> None:
    assert envelope_problem([1, 2, 3]) == "not a JSON object"
    assert envelope_problem("scan") == "not a JSON object"


def test_an_event_whose_data_makes_the_rules_raise_is_refused_and_the_others_applied(scan: EventFactory) -> None:
    good = [scan("01HZX0000000000000000000B1", "2024-06-01T09:00:00Z", points_award=10),
            scan("01HZX0000000000000000000B3", "2024-06-01T11:00:00Z", points_award=20)]
    bad = scan("01HZX0000000000000000000B2", "2024-06-01T10:00:00Z")
    bad["data"]["product_snapshot"]["economy"]["points_award"] = "ten"
    processor = LoyaltyProcessor()
    with pytest.raises(ValueError, match="invalid literal for int"):
        processor.apply_stored(None, [good[0], bad, good[1]], RULES)

    outcome, refused = processor.apply_each_alone(None, [good[0], bad, good[1]], RULES)

    assert [(event["event_id"], type(exc).__name__) for event, exc in refused] == [
        ("01HZX0000000000000000000B2", "ValueError")]
    assert outcome is not None
    state = outcome.state
    assert state.applied_count == 2
    assert [state.has_applied(f"01HZX0000000000000000000{n}") for n in ("B1", "B2", "B3")] == [
        True, False, True]
    assert (state.version, state.points_balance, state.lifetime_points) == (2, 130, 130)  # 10 + 20 + first_scan 100
    assert outcome.applied == ["product_scanned", "product_scanned"]
    assert outcome.unlocked == ["first_scan"]
    assert [emit.name for emit in outcome.emits] == [
        "achievement_unlocked", "user_snapshot", "user_snapshot"]  # one snapshot per event applied alone


def test_applying_each_alone_on_a_stored_state_and_twice_gives_the_same_state(scan: EventFactory) -> None:
    processor = LoyaltyProcessor()
    stored = processor.apply_stored(None, [scan("01HZX0000000000000000000C1", points_award=10)], RULES)
    bad = scan("01HZX0000000000000000000C2")
    bad["data"] = {"product_snapshot": "not an object"}
    events = [bad, scan("01HZX0000000000000000000C3", "2024-05-23T10:00:00Z", points_award=5)]

    first, refused = processor.apply_each_alone(stored.state.to_bytes(), events, RULES)
    again, _ = processor.apply_each_alone(stored.state.to_bytes(), events, RULES)

    assert [event["event_id"] for event, _ in refused] == ["01HZX0000000000000000000C2"]
    assert first is not None and again is not None
    assert first.state.applied_count == 2
    assert [first.state.has_applied(f"01HZX0000000000000000000{n}") for n in ("C1", "C2", "C3")] == [
        True, False, True]
    assert first.state.lifetime_points == 115  # 10 + first_scan 100, then 5
    assert first.state.to_bytes() == again.state.to_bytes()


def test_every_event_refused_leaves_no_outcome(scan: EventFactory) -> None:
    bad = scan("01HZX0000000000000000000D1")
    bad["data"]["product_snapshot"]["economy"]["points_award"] = [1]
    outcome, refused = LoyaltyProcessor().apply_each_alone(None, [bad], RULES)
    assert outcome is None
    assert [event["event_id"] for event, _ in refused] == ["01HZX0000000000000000000D1"]


def test_a_state_stored_with_a_numeric_brand_id_before_the_fix_reads_back_with_its_key_text() -> None:
    stored = (b'{"brand_id":7,"user_id":"u1","version":1,"counts":{"product_scanned":1},'
              b'"applied":["01HZX0000000000000000000E1"],"lifetime_points":110,"points_balance":110}')
    state = UserState.from_bytes(stored)
    assert (state.brand_id, state.user_id, state.version, state.lifetime_points) == ("7", "u1", 1, 110)
    assert state.applied_count == 1
    assert [state.has_applied(event_id) for event_id in ("01HZX0000000000000000000E1", "01HZX0000000000000000000E2")] == [
        True, False]


def test_a_state_broken_otherwise_still_fails_to_read() -> None:
    with pytest.raises(Exception, match="Expected `int`"):
        UserState.from_bytes(b'{"brand_id":"7","user_id":"u1","version":"one"}')

"""The native fast path of the event routes (fast_batch) against the strict path (pydantic, accept_event).

The fast path answers a request only when it accepts every event of it; otherwise the strict path
decides the whole request, so every rejection's status, field and message stay the strict path's.
These tests check both halves: whatever the fast path accepts, the strict path accepts too and builds
the same Kafka records (key, headers, event id, value byte for byte); whatever the strict path
refuses, the fast path hands over (None). Inputs: every seed and one example of every other client
event, the event's own fields replaced by edge values, the data variants of test_schemas_fast_path.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from synergy_ingest.app import _segment_acceptor
from synergy_ingest.client_events import AcceptedEvent, EventRejected, accept_event, parse_client_event
from synergy_ingest.fast_batch import (
    accept_segment_batch,
    accept_segment_track,
    decode_segment_batch,
    decode_segment_track,
    fast_batch,
    fast_event,
)
from synergy_ingest.request_context import RequestContext
from synergy_schemas.envelope import is_ulid
from ulid import ULID

from tests.unit.test_schemas_fast_path import EDGE_SCALARS, EXAMPLES, variants

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed_examples"
CLIENT_SEED_EVENTS = sorted(
    p for p in SEEDS.glob("00[01]_*.json") if "webhook" not in p.name and "achievement_unlocked" not in p.name
)
MAX_EVENTS = 500
MAX_EVENT_BYTES = 32_768
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148 Safari/604.1"


def context(**overrides: Any) -> RequestContext:
    values: dict[str, Any] = {
        "brand_id": "7",
        "received_at": datetime(2024, 5, 22, 18, 40, 1, 250, tzinfo=UTC),
        "correlation_id": "corr-1",
        "user_agent": IPHONE,
        "client_ip": "203.0.113.9",
    }
    values.update(overrides)
    return RequestContext(**values)


def strict(item: Any, request: RequestContext) -> AcceptedEvent | EventRejected:
    try:
        return accept_event(parse_client_event(item), request, MAX_EVENT_BYTES)
    except EventRejected as rejected:
        return rejected


def same_record(fast: AcceptedEvent, slow: AcceptedEvent) -> None:
    """The same record; without a client id each path makes a fresh ULID, the only difference."""
    fast_value = fast.record.value
    if fast.event_id != slow.event_id:
        assert is_ulid(fast.event_id) and is_ulid(slow.event_id)
        assert orjson.loads(slow.record.value)["event_id"] == slow.event_id
        fast_value = fast_value.replace(fast.event_id.encode(), slow.event_id.encode(), 1)
    assert fast.type == slow.type
    assert fast.record.key == slow.record.key
    assert fast.record.headers == slow.record.headers
    assert fast_value == slow.record.value


def check_event(item: Any, request: RequestContext | None = None) -> AcceptedEvent | None:
    """Both paths on one event, alone and as a batch of one: the fast path takes it only if the
    strict path accepts it, and then with the same record. Returns the fast path's answer."""
    request = request or context()
    body = dumps(item)
    try:
        slow = strict(orjson.loads(body), request)  # what the server does with the body
    except orjson.JSONDecodeError:
        slow = EventRejected("body", "malformed JSON", "malformed", 400)
    fast = fast_event(body, request, MAX_EVENT_BYTES)
    batch = fast_batch(b'{"batch":[' + body + b"]}", request, MAX_EVENTS, MAX_EVENT_BYTES)
    if isinstance(slow, EventRejected):
        assert fast is None, f"fast path accepted what the strict path refuses ({slow}): {item!r}"
        assert batch is None
        return None
    if fast is not None:
        same_record(fast, slow)
        assert batch is not None
        same_record(batch[0], slow)
    else:
        assert batch is None
    return fast


def expanded_size(value: Any, budget: int = 50_000) -> int:
    """How many values `value` holds once written out, counted up to `budget`. The data variants
    share one list of 501 items wherever they put it (deepcopy keeps the sharing), so two or three of
    them nested write out as 501**2 or 501**3 items: far past any body ingest reads (413 first)."""
    seen = 0
    stack = [value]
    while stack and seen < budget:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return seen


def dumps(item: Any) -> bytes:
    """The body a client would send; the standard library writes the integers orjson refuses."""
    try:
        return orjson.dumps(item)
    except TypeError:
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


def seed_event(path: Path) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(path.read_text())
    return event


def example_events() -> list[dict[str, Any]]:
    events = [seed_event(path) for path in CLIENT_SEED_EVENTS]
    events += [{"name": name, "identifiers": {"id": "user-1"}, "data": data} for name, data in EXAMPLES]
    return events


@pytest.mark.parametrize("path", CLIENT_SEED_EVENTS, ids=lambda p: p.stem)
def test_the_fast_path_takes_every_seed_as_the_strict_path_does(path: Path) -> None:
    assert check_event(seed_event(path)) is not None


def test_the_fast_path_takes_a_whole_batch_of_every_example() -> None:
    request = context()
    items = example_events()
    fast = fast_batch(orjson.dumps({"batch": items}), request, MAX_EVENTS, MAX_EVENT_BYTES)
    assert fast is not None
    assert len(fast) == len(items) == 35  # 12 seeds, 12 seed data examples, 11 extra examples
    for item, accepted in zip(items, fast, strict=True):
        slow = strict(item, request)
        assert isinstance(slow, AcceptedEvent)
        same_record(accepted, slow)


def test_the_seed_record_as_kafka_gets_it() -> None:
    """Written out: the envelope of seed 000_1 with the request's facts (its device and address kept)."""
    event = seed_event(SEEDS / "000_1_product_scanned.json")
    accepted = fast_event(orjson.dumps({**event, "event_id": "scan-1"}), context(), MAX_EVENT_BYTES)
    assert accepted is not None
    assert accepted.record.key == b"7:user-123"
    assert accepted.record.headers == [
        ("event_name", b"product_scanned"),
        ("schema_version", b"1"),
        ("correlation_id", b"corr-1"),
    ]
    envelope = orjson.loads(accepted.record.value)
    assert envelope == {
        "event_id": accepted.event_id,
        "type": "track",
        "name": "product_scanned",
        "brand_id": "7",
        "identifiers": {"id": "user-123"},
        "data": event["data"],
        "timestamp": "2024-05-22T18:35:12Z",
        "received_at": "2024-05-22T18:40:01.000250Z",
        "schema_version": 1,
        "source": "ingest",
        "correlation_id": "corr-1",
    }
    assert list(envelope) == [
        "event_id", "type", "name", "brand_id", "identifiers", "data",
        "timestamp", "received_at", "schema_version", "source", "correlation_id",
    ]  # fmt: skip


EVENT_FIELDS = ["event_id", "type", "name", "brand_id", "timestamp", "data"]
EVENT_EDGE_VALUES: list[Any] = [
    *EDGE_SCALARS,
    "7", "8", "track", "identify", "page", "screen", "TRACK", "Product Scanned", "scan", "product_scanned",
    "achievement_unlocked", "not_an_event", "01J0000000000000000000000A", "01j0000000000000000000000a",
    "a\x00b", "a\x1fb", "a\x7fb", "a\x85b", "a\u2028b", "a\u2029b", "a\tb", "a\nb", "tab\t", "é", "x" * 64,
    "x" * 65, "2024-05-22T18:35:12+00:00", "2024-05-22T18:35:12.5Z", "2024-05-22T18:35:12.123456+05:30",
    "2024-05-22T18:35:12.1234567Z", "2024-05-22T18:35:12-07:00", "2024-13-22T18:35:12Z",
    "2024-05-22T18:35:12+23:59", "2024-05-22T18:35:12+24:00", "0001-01-01T00:00:00Z", 1716402912,
    1716402912.5, [], {}, {"unknown": 1}, [1],
]  # fmt: skip
IDENTIFIER_VALUES: list[Any] = [
    {}, {"id": None}, {"id": None, "anonymous_id": None}, {"id": ""}, {"anonymous_id": "a-1"},
    {"id": None, "anonymous_id": "a-1"}, {"id": "u", "anonymous_id": "a"}, {"id": "x" * 150},
    {"id": "x" * 151}, {"id": "u\x00"}, {"anonymous_id": "a\u2028"}, {"id": 5}, {"id": "u", "other": 1},
    {"id": "😀" * 150}, {"id": "😀" * 151}, None, [], "u",
]  # fmt: skip


def test_every_edge_value_in_every_field_of_the_event() -> None:
    """Each of the event's own fields (and identifiers) replaced by each edge value, absent, or an
    unknown key added; the fast path must agree with the strict path or hand over."""
    taken = 0
    for original in [seed_event(SEEDS / "000_1_product_scanned.json"), example_events()[-1]]:
        for field in EVENT_FIELDS:
            for value in EVENT_EDGE_VALUES:
                taken += check_event({**original, field: value}) is not None
            dropped = {k: v for k, v in original.items() if k != field}
            taken += check_event(dropped) is not None
        for identifiers in IDENTIFIER_VALUES:
            taken += check_event({**original, "identifiers": identifiers}) is not None
        check_event({k: v for k, v in original.items() if k != "identifiers"})
        check_event({**original, "unknown": 1})
    assert taken > 40  # the fast path does take the valid ones


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("identifiers.id", {"identifiers": {"id": "u\x00"}}, 422),
        ("identifiers.anonymous_id", {"identifiers": {"anonymous_id": "a\x1f"}}, 422),
        ("event_id", {"event_id": "e\u2028"}, 422),
        ("name", {"name": "product_scanned\x00"}, 422),
        ("brand_id", {"brand_id": "7\x85"}, 422),
        ("brand_id", {"brand_id": "8"}, 403),
        ("name", {"name": "achievement_unlocked"}, 422),
        ("name", {"name": "no_such_event"}, 422),
        (
            "data.product_snapshot.economy.msrp",
            {"data": {"product_snapshot": {"economy": {"msrp": 1.001}}}},
            422,
        ),
        ("timestamp", {"timestamp": "2024-05-22T18:35:12"}, 422),
    ],
)
def test_a_refused_event_is_left_to_the_strict_path(field: str, value: dict[str, Any], status: int) -> None:
    """The fast path hands these over; the strict path names the field with the status written here."""
    item = {**seed_event(SEEDS / "000_1_product_scanned.json"), **value}
    slow = strict(item, context())
    assert isinstance(slow, EventRejected)
    assert (slow.field, slow.status) == (field, status)
    assert fast_event(orjson.dumps(item), context(), MAX_EVENT_BYTES) is None
    good = seed_event(SEEDS / "000_1_product_scanned.json")
    assert fast_batch(orjson.dumps({"batch": [good, item]}), context(), MAX_EVENTS, MAX_EVENT_BYTES) is None


# Allowed by the control-character rule, refused by str.isprintable (the fast path's first check):
# no-break and ideographic spaces, a zero-width space, a BOM, a soft hyphen, an unassigned code point.
NOT_PRINTABLE_BUT_ALLOWED = ["a\u00a0b", "a\u3000b", "a\u200bb", "\ufeffa", "a\u00adb", "a\u0378b"]


@pytest.mark.parametrize("value", NOT_PRINTABLE_BUT_ALLOWED)
def test_ids_that_only_the_control_character_pattern_allows_stay_on_the_fast_path(value: str) -> None:
    seed = seed_event(SEEDS / "000_1_product_scanned.json")
    assert check_event({**seed, "event_id": value}) is not None
    assert check_event({**seed, "identifiers": {"id": value}}) is not None
    assert check_event({**seed, "identifiers": {"anonymous_id": value}}) is not None
    message = segment_message(seed)
    for field in ("userId", "anonymousId", "messageId"):
        assert check_segment({**message, field: value}) is not None


@pytest.mark.parametrize(
    ("timestamp", "taken"),
    [
        ("2024-05-22T18:35:12Z", True), ("2024-05-22T18:35:12.1Z", True),
        ("2024-05-22T18:35:12.123456Z", True), ("2024-05-22T18:35:12.1234567Z", False),
        ("2024-05-22T18:35:12+05:30", True), ("2024-05-22T18:35:12.12-07:00", True),
        ("2024-05-22T18:35:12", False), ("2024-05-22T18:35:12+0530", False), ("2024-05-22 18:35:12Z", False),
        ("2024-05-22t18:35:12z", False), ("\uff12024-05-22T18:35:12Z", False), ("2024-05-22T18:35:1\u0662Z", False),
        ("2024-05-22T18:35:12Z\n", False), ("2024-05-22T18:35:12.Z", False),
    ],
)  # fmt: skip
def test_the_plain_timestamp_forms_and_only_they_take_the_fast_path(timestamp: str, taken: bool) -> None:
    """The fast path reads RFC 3339's plain form (seconds, up to 6 decimals, Z or an offset); any other
    string goes to the strict path, which decides (check_event: the same verdict and record)."""
    seed = seed_event(SEEDS / "000_1_product_scanned.json")
    assert (check_event({**seed, "timestamp": timestamp}) is not None) is taken
    assert (check_segment({**segment_message(seed), "timestamp": timestamp}) is not None) is taken


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b"null", b'{"batch": {}}', b'{"batch": []}', b'{"batch": [1]}', b'{"batch": null}',
     b'{"batch": [{"name": "product_scanned", "identifiers": {"id": "u"}, "data": {"a": "\\ud800"}}]}',
     b"\xff\xfe"],
)  # fmt: skip
def test_a_body_the_fast_path_cannot_take_goes_to_the_strict_path(body: bytes) -> None:
    assert fast_batch(body, context(), MAX_EVENTS, MAX_EVENT_BYTES) is None


def test_batch_bounds_and_sizes_are_left_to_the_strict_path() -> None:
    event = seed_event(SEEDS / "000_1_product_scanned.json")
    assert fast_batch(orjson.dumps({"batch": [event] * 3}), context(), 2, MAX_EVENT_BYTES) is None
    assert fast_batch(orjson.dumps({"batch": [event] * 2}), context(), 2, MAX_EVENT_BYTES) is not None
    assert fast_event(orjson.dumps(event), context(), 1000) is None
    too_large = strict(event, context())
    assert isinstance(too_large, AcceptedEvent)
    assert fast_event(orjson.dumps(event), context(), len(too_large.record.value)) is not None
    assert fast_event(orjson.dumps(event), context(), len(too_large.record.value) - 1) is None


@pytest.mark.parametrize(
    "event_context",
    [None, {}, {"device": {}}, {"device": {"os": None}}, {"device": {"os": "iOS"}}, {"location": {}},
     {"location": {"ip_address": None}}, {"location": {"geo_city": "LA"}}, {"location": {"ip_address": "1.2.3.4"}},
     {"device": {"os": "iOS"}, "location": {"ip_address": "1.2.3.4"}}, {"time": {"is_weekend": True}}],
)  # fmt: skip
@pytest.mark.parametrize(
    "facts", [{}, {"user_agent": None}, {"client_ip": None}, {"user_agent": None, "client_ip": None}]
)
def test_the_request_facts_are_filled_as_the_strict_path_fills_them(
    event_context: Any, facts: dict[str, Any]
) -> None:
    data: dict[str, Any] = {"product_snapshot": {"identity": {"product_id": 45}}}
    if event_context is not None:
        data["event_context"] = event_context
    assert check_event(
        {"name": "product_scanned", "identifiers": {"id": "u"}, "data": data}, context(**facts)
    )


def test_a_body_with_white_space_gives_the_same_envelope() -> None:
    """The data is passed through as the client wrote it: the same JSON, its spacing kept."""
    event = {**seed_event(SEEDS / "000_1_product_scanned.json"), "event_id": "scan-1"}
    accepted = fast_event(json.dumps(event, indent=2).encode(), context(), MAX_EVENT_BYTES)
    slow = strict(event, context())
    assert accepted is not None and isinstance(slow, AcceptedEvent)
    assert orjson.loads(accepted.record.value) == orjson.loads(slow.record.value)
    assert accepted.record.key == slow.record.key


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants())
def test_the_fast_path_agrees_with_the_strict_path_on_data_variants(variant: tuple[str, Any]) -> None:
    name, data = variant
    assume(expanded_size(data) < 50_000)  # a body of this size gets a 413 before any parsing
    check_event({"name": name, "identifiers": {"id": "u"}, "event_id": "e-1", "data": copy.deepcopy(data)})


# --- the Segment-compatible routes ---------------------------------------------------------------


def segment_strict(
    message: Any, request: RequestContext, route_type: str | None
) -> AcceptedEvent | EventRejected:
    try:
        return _segment_acceptor(request, MAX_EVENT_BYTES, route_type)(message)
    except EventRejected as rejected:
        return rejected


def check_segment(message: Any, request: RequestContext | None = None) -> AcceptedEvent | None:
    """Both paths on one Segment message, on /v1/track and in a /v1/batch of one."""
    request = request or context()
    body = dumps(message)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    answers = []
    for route_type, fast in (
        ("track", _segment_track(body, request)),
        (None, _segment_batch(b'{"batch":[' + body + b"]}", request)),
    ):
        slow = segment_strict(parsed, request, route_type) if parsed is not None else None
        if not isinstance(slow, AcceptedEvent):
            assert fast is None, f"fast path accepted what the strict path refuses ({slow}): {message!r}"
        elif fast is not None:
            same_record(fast, slow)
        answers.append(fast)
    return answers[0]


def _segment_track(body: bytes, request: RequestContext) -> AcceptedEvent | None:
    message = decode_segment_track(body)
    return None if message is None else accept_segment_track(message, request, MAX_EVENT_BYTES)


def _segment_batch(body: bytes, request: RequestContext) -> AcceptedEvent | None:
    batch = decode_segment_batch(body)
    accepted = None if batch is None else accept_segment_batch(batch, request, MAX_EVENTS, MAX_EVENT_BYTES)
    return None if accepted is None else accepted[0]


def segment_message(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": event["identifiers"].get("id"),
        "event": event["name"],
        "properties": event.get("data", {}),
        "messageId": "m-1",
        "timestamp": "2024-05-22T18:35:12Z",
        "context": {"library": {"name": "analytics.js"}, "userAgent": IPHONE, "ip": "198.51.100.4"},
        "integrations": {},
        "sentAt": "2024-05-22T18:35:13Z",
    }


def test_the_segment_fast_path_takes_every_example_as_the_strict_path_does() -> None:
    for event in example_events():
        assert check_segment(segment_message(event)) is not None, event["name"]


def test_a_segment_batch_of_every_example() -> None:
    request = context()
    messages = [segment_message(event) for event in example_events()]
    body = orjson.dumps({"batch": messages, "sentAt": "2024-05-22T18:35:13Z", "writeKey": "k"})
    batch = decode_segment_batch(body)
    assert batch is not None and batch.writeKey == "k"
    fast = accept_segment_batch(batch, request, MAX_EVENTS, MAX_EVENT_BYTES)
    assert fast is not None and len(fast) == 35
    for message, accepted in zip(messages, fast, strict=True):
        slow = segment_strict(message, request, None)
        assert isinstance(slow, AcceptedEvent)
        same_record(accepted, slow)
        assert orjson.loads(accepted.record.value)["source"] == "segment"


SEGMENT_FIELDS = ["type", "userId", "anonymousId", "messageId", "event", "properties", "timestamp", "context"]
SEGMENT_EDGE_VALUES: list[Any] = [
    *EVENT_EDGE_VALUES, 7, 0, -1, True, {"userAgent": 5}, {"ip": ""}, {"userAgent": "", "ip": None},
    {"ip": "10.0.0.1"}, {"userAgent": "curl/8"}, {"library": "x"}, "identify", "page",
]  # fmt: skip


def test_every_edge_value_in_every_field_of_a_segment_message() -> None:
    taken = 0
    for original in [
        segment_message(seed_event(SEEDS / "000_1_product_scanned.json")),
        segment_message(example_events()[-1]),
    ]:
        for field in SEGMENT_FIELDS:
            for value in SEGMENT_EDGE_VALUES:
                taken += check_segment({**original, field: value}) is not None
            taken += check_segment({k: v for k, v in original.items() if k != field}) is not None
        taken += check_segment({**original, "userId": None, "anonymousId": "anon-1"}) is not None
        taken += check_segment({**original, "userId": "", "anonymousId": "anon-1"}) is not None
        check_segment({**original, "userId": "", "anonymousId": ""})
        check_segment({**original, "writeKey": 5, "unknown": {"a": [1, 2]}})
    assert taken > 40


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("userId", {"userId": "u\x00"}),
        ("anonymousId", {"userId": None, "anonymousId": "a\u2029"}),
        ("messageId", {"messageId": "m\x1b"}),
        ("event", {"event": "product_scanned\x7f"}),
        ("userId", {"userId": None}),
        (
            "properties.product_snapshot.economy.msrp",
            {"properties": {"product_snapshot": {"economy": {"msrp": -1}}}},
        ),
    ],
)
def test_a_refused_segment_message_is_left_to_the_strict_path(field: str, value: dict[str, Any]) -> None:
    message = {**segment_message(seed_event(SEEDS / "000_1_product_scanned.json")), **value}
    slow = segment_strict(message, context(), "track")
    assert isinstance(slow, EventRejected)
    assert (slow.field, slow.status) == (field, 422)
    assert _segment_track(orjson.dumps(message), context()) is None
    assert _segment_batch(orjson.dumps({"batch": [message]}), context()) is None


def test_segment_bodies_the_fast_path_cannot_take() -> None:
    assert decode_segment_track(b'{"userId": "u", "event": "product_scanned", "x": "\xff"}') is None
    assert (
        decode_segment_batch(b'{"batch": [{"userId": "u", "event": "product_scanned"}]}') is None
    )  # no type
    assert decode_segment_batch(b'{"batch": [{"type": "identify", "userId": "u"}]}') is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants())
def test_the_segment_fast_path_agrees_with_the_strict_path_on_data_variants(variant: tuple[str, Any]) -> None:
    name, data = variant
    assume(expanded_size(data) < 50_000)  # a body of this size gets a 413 before any parsing
    message = segment_message({"name": name, "identifiers": {"id": "u"}, "data": copy.deepcopy(data)})
    check_segment(message, context(user_agent=None))


def test_events_without_a_client_id_get_distinct_ulids_of_the_request_time() -> None:
    request = context()
    event = {k: v for k, v in seed_event(SEEDS / "000_1_product_scanned.json").items() if k != "event_id"}
    accepted = fast_batch(orjson.dumps({"batch": [event] * 500}), request, MAX_EVENTS, MAX_EVENT_BYTES)
    assert accepted is not None
    ids = [one.event_id for one in accepted]
    assert len(set(ids)) == 500
    for one in accepted:
        assert is_ulid(one.event_id) and one.event_id == one.event_id.upper()
        assert ULID.from_str(one.event_id).milliseconds == 1716403201000  # 2024-05-22T18:40:01.000250Z
        assert orjson.loads(one.record.value)["event_id"] == one.event_id

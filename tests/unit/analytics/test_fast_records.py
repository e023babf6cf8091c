"""The native fast path (fast_records) gives what process_message gives, or leaves the message to it.

The service decodes a message with `processed_from_bytes` first and goes the slow way (orjson, then
process_message) only when it answers None. So the log holds the same rows as long as "the fast path
answers" implies "process_message answers the same" (action_data compared as the JSON it is: jsonb keeps
the value, not the text). Checked on every seed event and on variants of each (a field replaced by an
awkward value of another type, dropped, a NUL, an alias ...). The fast path must also take the seeds'
ordinary events, or the speed-up is not real.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from synergy_analytics.fast_records import processed_from_bytes
from synergy_analytics.records import BalanceSeen, Processed, Unusable, process_message
from synergy_streaming import Partition, Record, Undecodable, decode_envelope

SEEDS = Path(__file__).resolve().parents[2] / "fixtures" / "seed_examples"
SEED_EVENTS = sorted(p for p in SEEDS.glob("00[01]_*.json") if "_webhook_" not in p.name)


def envelope(path: Path) -> dict[str, Any]:
    body = json.loads(path.read_text())
    return {"event_id": "01JEVENT000000000000000000", "type": "track", "brand_id": "42", "source": "ingest",
            "received_at": "2026-10-05T00:00:01Z", **body}


AWKWARD = ("", 0, -1, 1.5, 12.0, True, None, "12", " 7 ", "x" * 300, [], {}, 2**70, "a\x00b")
TOP_FIELDS = ("event_id", "brand_id", "timestamp", "received_at", "type", "name", "source", "identifiers", "data")
DATA_PATHS = (
    ("product_id",), ("points",), ("points_awarded",), ("scan_data",), ("scan_data", "points_awarded"),
    ("product_snapshot",), ("product_snapshot", "identity"), ("product_snapshot", "identity", "product_id"),
    ("product_snapshot", "identity", "sku"), ("event_context",), ("event_context", "location", "ip_address"),
    ("event_context", "device", "user_agent"), ("user_snapshot",), ("user_snapshot", "economy", "points_balance"),
    ("user_snapshot", "referral_data", "total_referrals_completed"), ("referral_data",), ("wishlist_data",),
)


def with_value(message: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    changed = copy.deepcopy(message)
    node = changed
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return changed


def variants() -> list[dict[str, Any]]:
    found = []
    for path in SEED_EVENTS:
        message = envelope(path)
        found.append(message)
        found.extend(with_value(message, (field,), value) for field in TOP_FIELDS for value in AWKWARD)
        found.extend({k: v for k, v in message.items() if k != field} for field in TOP_FIELDS)
        found.extend(with_value(message, ("data", *p), value) for p in DATA_PATHS for value in AWKWARD)
        found.extend(
            with_value(message, field, value)
            for field, value in (
                (("name",), "wishlist_added"), (("name",), "achievement_unlocked"), (("type",), "identify"),
                (("source",), "achievements"), (("received_at",), message.get("timestamp")),
                (("timestamp",), "2026-10-05T00:00:00"), (("timestamp",), "2026-10-05T01:00:00+02:00"),
                (("timestamp",), "yesterday"), (("brand_id",), 42), (("brand_id",), "²"),
                (("identifiers",), {"id": 123, "anonymous_id": "a1"}), (("identifiers",), {"anonymous_id": "a"}),
                (("data", "user_snapshot"), {"economy": {"points_balance": 900},
                                             "referral_data": {"total_referrals_completed": 2}}),
            )
        )
    return found


def slow_way(value: bytes) -> Processed | None:
    """The runtime's envelope decode, then process_message."""
    try:
        return process_message(decode_envelope(Record(Partition("t", 0), 0, None, value)))
    except (Undecodable, Unusable):
        return None


def same_processing(fast: Processed, slow: Processed) -> bool:
    as_json = json.loads(fast.row.action_data) == json.loads(slow.row.action_data)
    return as_json and fast.row._replace(action_data="") == slow.row._replace(action_data="") and (
        fast.changes == slow.changes
    )


def test_the_fast_path_never_answers_otherwise_than_process_message() -> None:
    messages = variants()
    answered = 0
    for message in messages:
        value = json.dumps(message).encode()  # json: integers past 64 bits too
        fast = processed_from_bytes(value)
        if fast is None:
            continue
        answered += 1
        slow = slow_way(value)
        assert slow is not None, f"the fast path logged what process_message refuses: {message}"
        assert same_processing(fast, slow), f"{message}\nfast {fast}\nslow {slow}"
    assert len(messages) > 5000
    assert answered > 1000  # the fast path takes most variants, not only the plain seeds


@pytest.mark.parametrize("path", SEED_EVENTS, ids=lambda p: p.name)
def test_the_fast_path_takes_every_seed_event_but_the_read_model_ones(path: Path) -> None:
    message = envelope(path)
    fast = processed_from_bytes(orjson.dumps(message))
    if "referral" in path.name or "wishlist" in path.name:
        assert fast is None  # wishlists and referrals: process_message computes their changes
    else:
        assert fast is not None
        assert same_processing(fast, process_message(message))
        assert processed_from_bytes(orjson.dumps(message)) == fast  # processing twice: the same


def test_a_scan_the_fast_way_is_the_row_the_seed_describes() -> None:
    message = envelope(SEEDS / "000_1_product_scanned.json")
    message["data"]["user_snapshot"] = {"economy": {"points_balance": 1250}}
    processed = processed_from_bytes(orjson.dumps(message))
    assert processed is not None
    row = processed.row
    assert (row.event_id, row.brand_id, row.action_type, row.event_type) == (
        "01JEVENT000000000000000000", 42, "product_scanned", "track")
    assert row.user_id == message["identifiers"]["id"]
    assert json.loads(row.action_data)["product_snapshot"] == message["data"]["product_snapshot"]
    assert processed.changes == (BalanceSeen(message["identifiers"]["id"], 1250, None),)


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"brand_id": "42"}', b'{"event_id": "e", "brand_id": "a"}',
                                   b'{"event_id": "e", "brand_id": "42", "timestamp": "x"}'])
def test_what_the_fast_path_cannot_log_goes_the_slow_way(value: bytes) -> None:
    assert processed_from_bytes(value) is None

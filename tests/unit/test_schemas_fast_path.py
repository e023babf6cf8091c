"""The native fast path (fast_events) never accepts what the pydantic models refuse.

check_event_data asks the msgspec Structs first and pydantic only when they refuse, so strictness
holds as long as "fast path accepts" implies "the model accepts". These tests check that on every
seed event, on one example of each client event the seeds lack, and on generated variants of them
(a value replaced by an awkward one, a key dropped, an unknown key added). They also check that the
fast path does take the seeds, so the speed-up is real.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from synergy_schemas.envelope import derive_event_id, ulid_text
from synergy_schemas.events import (
    CLIENT_EVENT_DATA_MODELS,
    EVENT_DATA_MODELS,
    canonical_event_name,
    check_event_data,
)
from synergy_schemas.fast_events import FAST_CLIENT_EVENT_DATA, fast_accepts
from ulid import ULID

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seed_examples"
SEED_EVENTS = sorted(path for path in FIXTURES.glob("00[01]_*.json") if "_webhook_" not in path.name)

ITEM = {"product_id": 7, "product_name": "Vape", "sku": "V-1", "quantity": 2, "price": 19.99}
PRODUCT = {"product_snapshot": {"identity": {"product_id": "p-7"}, "economy": {"msrp": 25}}}
# The client events no seed example shows, each with its money, list and timestamp fields filled.
EXTRA_EXAMPLES: dict[str, dict[str, Any]] = {
    "product_viewed": {
        **PRODUCT,
        "product_id": 7,
        "product_price": 19.99,
        "currency": "USD",
        "view_duration": 30,
        "device_type": "mobile",
        "referrer": "https://example.com/",
    },
    "cart_item_added": {
        **ITEM,
        "currency": "EUR",
        "cart_items": [ITEM, {"product_id": "x"}],
        "cart_total": 39.98,
    },
    "cart_item_removed": {"product_id": "p-1", "quantity": 1},
    "order_completed": {
        "order_id": "o-1",
        "items": [ITEM],
        "order_total": 39.98,
        "currency": "USD",
        "ref": "mail",
    },
    "watchlist_item_added": {
        "product_id": 7,
        "current_price": 20,
        "original_price": 25.5,
        "target_price": 18.0,
        "in_stock": True,
        "notify_on_price_drop": True,
    },
    "watchlist_item_removed": {"product_id": 7},
    "wishlist_item_removed": {**PRODUCT, "wishlist_data": {"wishlist_item_id": "w-1", "goal_type": "custom"}},
    "product_price_changed": {
        "product_id": 7,
        "old_price": 25.0,
        "new_price": 19.99,
        "changed_at": "2024-05-22T18:35:12+02:00",
    },
    "product_stock_changed": {"product_id": 7, "in_stock": False, "quantity": 0, "old_quantity": 3},
    "referral_converted": {
        "referral_data": {"referrer_user_id": 1, "points_awarded_to_referrer": 500, "status": "converted"}
    },
    "reward_redeemed": {"reward_snapshot": {"economy": {"points_cost": 100, "retail_value": 9.5}}},
}


def _seed_examples() -> list[tuple[str, dict[str, Any]]]:
    examples = []
    for path in SEED_EVENTS:
        event = json.loads(path.read_text())
        name = canonical_event_name(event["name"])
        if name in CLIENT_EVENT_DATA_MODELS:  # reserved events never reach the client path
            examples.append((name, event.get("data", {})))
    return examples


EXAMPLES = _seed_examples() + list(EXTRA_EXAMPLES.items())


def model_accepts(name: str, data: Any) -> bool:
    try:
        EVENT_DATA_MODELS[name].model_validate(data)
    except ValidationError:
        return False
    return True


def test_every_client_event_has_a_fast_path() -> None:
    assert set(FAST_CLIENT_EVENT_DATA) == set(CLIENT_EVENT_DATA_MODELS)


def test_the_examples_cover_every_client_event() -> None:
    assert {name for name, _ in EXAMPLES} == set(CLIENT_EVENT_DATA_MODELS)


@pytest.mark.parametrize(("name", "data"), EXAMPLES, ids=[f"{i}-{n}" for i, (n, _) in enumerate(EXAMPLES)])
def test_both_accept_every_example(name: str, data: dict[str, Any]) -> None:
    assert model_accepts(name, data)
    assert fast_accepts(name, data)


# Values that sit on the edges of the field types: bounds, near-misses, other JSON types.
EDGE_SCALARS: list[Any] = [
    None, True, False,
    0, 1, -1, 9, 10, 23, 24, 100, 101, 10_000, 10_001, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
    2**63 - 1, 2**63, 999_999_999_999, 9_999_999_999, 10**12, 10**13,
    0.0, -0.0, 0.1, 0.01, 0.001, 0.005, 1.5, 9.99, 9.995, 10.0, 45.0, 88.5, 99.99, 100.0,
    100.01, 0.30000000000000004, 1e-2, 1e-5, 1e16, 9_999_999_999.99, 9_999_999_999.999,
    12345678.9, 1234567890.12, 99999999999.99, 1e10, 123.456,
    "", "a", "x" * 20, "x" * 21, "x" * 50, "x" * 51, "x" * 100, "x" * 101, "x" * 150,
    "x" * 151, "x" * 255, "x" * 256, "é" * 100, "😀" * 100, "😀" * 101,
    "a@b", "a@b\n", "a@b.c", "a @b", "a@@b", "@b", "a\u00a0@b", "a\u1680x@b", "a\u180e@b",
    "a\u200b@b", "a\ufeff@b", "a\x1c@b", "a\x85@b", "a\u3000@b", "jane.doe@example.com",
    "USD", "usd", "US", "USDX", "USD\n", "ÜSD", "EUR",
    "1.2.3.4", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4\n", "::1",
    "\u0661.\u0662.\u0663.\u0664", "1.2.3.4 ", "0.0.0.0", "fe80::1%eth0", "2001:db8::1",
    "2024-05-21T10:00:00Z", "2024-05-21T10:00:00", "2024-05-21", "2024-02-30T10:00:00Z",
    "2024-05-21 10:00:00Z", "2024-05-21t10:00:00z", "2024-05-21T10:00:00.123456789Z",
    "2024-05-21T24:00:00Z", "2024-05-21T23:59:60Z", "2024-05-21T10:00:00+24:00",
    "2024-05-21T10:00:00-00:00", "2024-05-21T10:00Z", "20240521T100000Z", "1716285600",
    "2024-05-21T10:00:00+0200", "0000-01-01T00:00:00Z", "2024-05-21T10:00:00.Z",
    "Sativa", "sativa", "mobile", "Mobile", "pending", "Monday", "custom", "rare", "sms",
    "scan_count", "wishlist_item", "unknown", "desktop", "converted", "legendary",
]  # fmt: skip
AWKWARD_SCALARS = st.one_of(
    st.sampled_from(EDGE_SCALARS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
AWKWARD_VALUES = st.one_of(
    AWKWARD_SCALARS,
    st.lists(AWKWARD_SCALARS, max_size=3),
    st.dictionaries(
        st.sampled_from(["product_id", "x", "custom_a", "identity"]), AWKWARD_SCALARS, max_size=2
    ),
    st.just([ITEM] * 501),
    st.just(["t"] * 101),
    st.just([]),
    st.just({}),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _container(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def variants(draw: st.DrawFn) -> tuple[str, Any]:
    name, original = draw(st.sampled_from(EXAMPLES))
    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        action = draw(st.sampled_from(["replace", "drop", "add"])) if paths else "add"
        if action == "add":
            dicts = [()] + [p for p in paths if isinstance(_container(data, (*p, None)), dict)]
            where = draw(st.sampled_from(dicts))
            target = _container(data, (*where, None))
            key = draw(st.sampled_from(["unknown", "custom_mood", "custom_Bad", "product_id", "identity"]))
            target[key] = copy.deepcopy(draw(AWKWARD_VALUES))
            continue
        path = draw(st.sampled_from(paths))
        target = _container(data, path)
        if action == "drop" and isinstance(target, dict):
            del target[path[-1]]
        else:
            target[path[-1]] = copy.deepcopy(draw(AWKWARD_VALUES))
    return name, data


def test_every_edge_value_in_every_place_of_every_example() -> None:
    """Deterministic sweep: each leaf of each example replaced by each edge value."""
    for name, original in EXAMPLES:
        for path in _paths(original):
            for value in EDGE_SCALARS:
                data = copy.deepcopy(original)
                _container(data, path)[path[-1]] = value
                if fast_accepts(name, data):
                    assert model_accepts(name, data), f"{name} at {path}: {value!r} accepted by the fast path"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants())
def test_the_fast_path_accepts_nothing_the_model_refuses(variant: tuple[str, Any]) -> None:
    name, data = variant
    if fast_accepts(name, data):
        assert model_accepts(name, data), f"fast path accepted what {name}'s model refuses: {data!r}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants())
def test_check_event_data_answers_as_the_model_alone(variant: tuple[str, Any]) -> None:
    """Same verdict, and on a refusal the same first error (field and message) as pydantic alone."""
    name, data = variant
    try:
        EVENT_DATA_MODELS[name].model_validate(data)
        expected: Any = "accepted"
    except ValidationError as exc:
        expected = exc.errors()[0]["loc"], exc.errors()[0]["msg"]
    try:
        check_event_data(name, data)
        got: Any = "accepted"
    except ValidationError as exc:
        got = exc.errors()[0]["loc"], exc.errors()[0]["msg"]
    assert got == expected


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("product_scanned", {"product_snapshot": {"economy": {"msrp": 45.001}}}),
        ("product_scanned", {"product_snapshot": {"economy": {"msrp": "45.00"}}}),
        ("product_scanned", {"product_snapshot": {"economy": {"msrp": True}}}),
        ("product_scanned", {"product_snapshot": {"attributes": {"potency_thc_percent": 100.5}}}),
        ("product_scanned", {"user_snapshot": {"identity": {"email": "jane@example.com\n"}}}),
        ("product_scanned", {"user_snapshot": {"identity": {"user_id": True}}}),
        ("product_scanned", {"user_snapshot": {"identity": {"created_at": "2024-05-21T10:00:00"}}}),
        ("product_scanned", {"event_context": {"location": {"ip_address": "256.1.1.1"}}}),
        ("product_scanned", {"event_context": {"device": {"device_type": "phone"}}}),
        ("product_scanned", {"unknown": 1}),
        ("order_completed", {"items": []}),
        ("cart_item_added", {"product_id": 1, "quantity": 0}),
    ],
)
def test_the_fast_path_refuses_what_the_model_refuses(name: str, data: dict[str, Any]) -> None:
    assert not model_accepts(name, data)
    assert not fast_accepts(name, data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_ulid_text_writes_what_python_ulid_writes(value: bytes) -> None:
    assert ulid_text(value) == str(ULID.from_bytes(value))


def test_ulid_text_at_the_extremes() -> None:
    assert ulid_text(bytes(16)) == "00000000000000000000000000"
    assert ulid_text(b"\xff" * 16) == "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"


def test_derived_event_ids_are_unchanged() -> None:
    """Ids derived from client ids before the faster encoder: retries must keep deduplicating."""
    # str(ULID.from_bytes(sha256(b"brand-1\x00order-42").digest()[:16])), written out
    assert derive_event_id("brand-1", "order-42") == "6Z1YJR05GX093RHFYWD6SYRGY2"
    assert derive_event_id("brand-1", "01j0000000000000000000000a") == "01J0000000000000000000000A"

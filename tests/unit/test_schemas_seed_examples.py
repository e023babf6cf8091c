"""Every JSON example of seeds 000, 001 and 004 validates against its model and round-trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from synergy_schemas import tracking
from synergy_schemas.events import (
    EVENT_ALIASES,
    RESERVED_EVENTS,
    ReservedEventError,
    canonical_event_name,
    validate_event_data,
)
from synergy_schemas.export import event_envelope_model
from synergy_schemas.seed_examples import extract_examples, render_fixtures, strip_json_comments

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "seed_examples"
SEEDS = REPO_ROOT.parent / "shared" / "seeds"

EVENT_FIXTURES = sorted(path for path in FIXTURES.glob("00[01]_*.json") if "_webhook_" not in path.name)
WEBHOOK_FIXTURES = sorted(FIXTURES.glob("001_webhook_*.json"))
PAYLOAD_FIXTURES = sorted(FIXTURES.glob("004_*.json"))

SEED_004_MODELS: dict[str, type[BaseModel]] = {
    "product_views_table_schema": tracking.ProductView,
    "marketing_queue_table_schema": tracking.MarketingQueueItem,
    "email_preferences_table_schema": tracking.EmailPreferences,
    "watch_list_table_schema": tracking.WatchListItem,
    "post_track_view_request": tracking.TrackViewRequest,
    "post_track_view_response": tracking.TrackViewResponse,
    "post_track_cart_add_request": tracking.TrackCartAddRequest,
    "post_track_watchlist_add_request": tracking.WatchlistAddRequest,
    "cloud_watch_event_trigger": tracking.ScheduleRule,
}

ENGINE_FIELDS = {
    "event_id": "01J0000000000000000000000A",
    "brand_id": "brand-1",
    "received_at": "2024-05-22T18:35:13Z",
    "source": "ingest",
    "correlation_id": "corr-1",
}


def load(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def as_json_value(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_fixture_sets_are_complete() -> None:
    assert len(EVENT_FIXTURES) == 14
    assert len(WEBHOOK_FIXTURES) == 3
    assert len(PAYLOAD_FIXTURES) == len(SEED_004_MODELS)


@pytest.mark.parametrize("path", EVENT_FIXTURES, ids=lambda p: p.stem)
def test_seed_event_data_validates_and_round_trips(path: Path) -> None:
    example = load(path)
    normalized = validate_event_data(example["name"], example["data"], allow_reserved=True)
    assert as_json_value(normalized) == example["data"]


@pytest.mark.parametrize("path", EVENT_FIXTURES, ids=lambda p: p.stem)
def test_seed_event_round_trips_as_a_whole_envelope(path: Path) -> None:
    example = load(path)
    name = canonical_event_name(example["name"])
    message = {**example, **ENGINE_FIELDS, "name": name}
    envelope = event_envelope_model(name).model_validate(message)
    dumped = envelope.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    assert as_json_value(dumped) == message


@pytest.mark.parametrize("path", PAYLOAD_FIXTURES, ids=lambda p: p.stem)
def test_seed_004_payload_validates_and_round_trips(path: Path) -> None:
    label = path.stem.split("_", 2)[2]
    model = SEED_004_MODELS[label]
    example = load(path)
    dumped = model.model_validate(example).model_dump(mode="json", exclude_unset=True)
    assert as_json_value(dumped) == example


@pytest.mark.parametrize("path", WEBHOOK_FIXTURES, ids=lambda p: p.stem)
def test_prediction_webhooks_are_extracted_but_are_not_events(path: Path) -> None:
    example = load(path)
    assert set(example) == {"user_id", "predictions"}
    assert "name" not in example


def test_seed_004_abandoned_cart_row_converts_to_a_cart_abandoned_event() -> None:
    row = tracking.MarketingQueueItem.model_validate(
        load(FIXTURES / "004_2_marketing_queue_table_schema.json")
    )
    trigger = row.trigger_data
    assert isinstance(trigger, tracking.AbandonedCartTriggerData)
    data = {
        "cart_items": [
            {
                "product_id": item.product_id,
                "product_name": item.product_name,
                "quantity": item.quantity,
                "price": tracking.cents_to_money(item.price or 0),
            }
            for item in trigger.cart_items
        ],
        "cart_total": tracking.cents_to_money(trigger.cart_total),
        "cart_abandoned_at": trigger.cart_abandoned_at,
        "discount_code": row.discount_code,
        "discount_amount": row.discount_amount,
    }
    normalized = validate_event_data("cart_abandoned", data, allow_reserved=True)
    assert normalized["cart_total"] == 19.99
    assert normalized["cart_items"][0]["price"] == 19.99
    assert normalized["cart_abandoned_at"] == "2025-01-14T10:00:00Z"


def test_aliases_map_to_canonical_names() -> None:
    assert EVENT_ALIASES == {
        "wishlist_added": "wishlist_item_added",
        "wishlist_removed": "wishlist_item_removed",
    }
    assert canonical_event_name("wishlist_added") == "wishlist_item_added"
    assert canonical_event_name("wishlist_removed") == "wishlist_item_removed"
    assert canonical_event_name("product_scanned") == "product_scanned"


@pytest.mark.parametrize("name", sorted(RESERVED_EVENTS))
def test_reserved_events_are_refused_unless_allowed(name: str) -> None:
    with pytest.raises(ReservedEventError, match=name):
        validate_event_data(name, {})


def test_seed_achievement_unlocked_example_is_refused_from_clients() -> None:
    example = load(FIXTURES / "000_5_achievement_unlocked.json")
    with pytest.raises(ReservedEventError):
        validate_event_data(example["name"], example["data"])
    assert validate_event_data(example["name"], example["data"], allow_reserved=True)


def test_comments_are_stripped_outside_strings_only() -> None:
    text = """```json
{
  "referral_method": "share_link", // or "direct_email"
  "referrer": "https://google.com",  # browser referrer
  "colour": "#003366",
  "user_snapshot": { // Full user snapshot as in product_scanned
  }
}
```"""
    assert extract_examples(text) == [
        {
            "referral_method": "share_link",
            "referrer": "https://google.com",
            "colour": "#003366",
            "user_snapshot": {},
        }
    ]


def test_request_lines_are_skipped_and_code_is_not_an_example() -> None:
    text = (
        '```json\nPOST /webhooks/customer-io\n{"user_id": 1}\n```\n'
        '```python\ndef f():\n    return {"a": True}\n```\n'
    )
    assert extract_examples(text) == [{"user_id": 1}]


json_text = st.text(alphabet=st.sampled_from(["a", "/", "#", '"', "\\", ",", "}", " ", "é"]), max_size=20)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), json_text, max_size=5))
def test_comment_stripping_never_changes_string_values(values: dict[str, str]) -> None:
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}, // {value}" for key, value in values.items()]
    block = "```json\n{\n" + "\n".join(lines) + "\n}\n```"
    assert extract_examples(block) == [values]
    assert json.loads(strip_json_comments(json.dumps(values))) == values


@pytest.mark.skipif(not SEEDS.is_dir(), reason=f"no seeds at {SEEDS}")
def test_fixtures_are_current() -> None:
    expected = render_fixtures(SEEDS)
    actual = {path.name: path.read_text(encoding="utf-8") for path in FIXTURES.glob("*.json")}
    assert actual == expected, (
        "seed example fixtures are stale: run "
        "`uv run python -m synergy_schemas.seed_examples ../shared/seeds tests/fixtures/seed_examples`"
    )

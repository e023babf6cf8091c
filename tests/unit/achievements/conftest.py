"""Fixture events for the achievements rules: seed examples wrapped in the envelope ingest writes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SEED_EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "seed_examples"
BRAND = "7"


def seed_example(name: str) -> dict[str, Any]:
    return json.loads((SEED_EXAMPLES / name).read_text())


def envelope(example: dict[str, Any], event_id: str, timestamp: str | None = None,
             user_id: str | None = None, **data_overrides: Any) -> dict[str, Any]:
    event = copy.deepcopy(example)
    event.update(
        event_id=event_id, type="track", brand_id=BRAND, schema_version=1, source="ingest",
        correlation_id=f"corr-{event_id}",
    )
    if timestamp:
        event["timestamp"] = timestamp
    event["received_at"] = event["timestamp"]
    if user_id:
        event["identifiers"] = {"id": user_id}
    event["data"].update(data_overrides)
    return event


EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def scan() -> EventFactory:
    """A seed 000 §2.1 product_scanned; points_award overridable."""
    example = seed_example("000_1_product_scanned.json")

    def make(event_id: str, timestamp: str = "2024-05-22T18:35:12Z", user_id: str = "user-123",
             points_award: int = 400) -> dict[str, Any]:
        event = envelope(example, event_id, timestamp, user_id)
        event["data"]["product_snapshot"]["economy"]["points_award"] = points_award
        return event

    return make


@pytest.fixture
def seed_event() -> Callable[..., dict[str, Any]]:
    def make(name: str, event_id: str, timestamp: str | None = None, user_id: str | None = None,
             **data_overrides: Any) -> dict[str, Any]:
        return envelope(seed_example(name), event_id, timestamp, user_id, **data_overrides)

    return make

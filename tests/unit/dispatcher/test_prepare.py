"""The dispatcher's prepare step on seed payloads: one work item per destination, pure and repeatable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from synergy_dispatcher.dispatcher import Dispatcher, Registry
from synergy_dispatcher.model import Destination
from synergy_dispatcher.senders import WebhookMessage
from synergy_dispatcher.settings import DispatcherSettings
from synergy_streaming import Partition, Record, Skip, Source

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed_examples"


def dispatcher_with(*destinations: Destination) -> Dispatcher:
    settings = DispatcherSettings()
    registry = Registry(None, None, settings)  # type: ignore[arg-type]  # prepare never touches Postgres
    registry.by_id = {d.id: d for d in destinations}
    return Dispatcher(settings, None, registry, None)  # type: ignore[arg-type]


def source_of(envelope: dict[str, Any], headers: tuple[tuple[str, bytes], ...] = ()) -> Source:
    record = Record(Partition("synergy.events.v1", 2), 41, b"7:user-123", orjson.dumps(envelope), headers)
    source = Source(record, generation=0)
    source.payload = envelope
    return source


def seed_envelope(brand_id: str = "7") -> dict[str, Any]:
    event = json.loads((SEEDS / "000_1_product_scanned.json").read_text())
    return {"event_id": "01HYB2K5J4X8Q6V9M3N7P1R2S4", "type": "track", "name": event["name"],
            "brand_id": brand_id, "identifiers": event["identifiers"], "data": event["data"],
            "timestamp": event["timestamp"], "received_at": "2024-05-22T18:35:13Z", "schema_version": 1,
            "source": "ingest", "correlation_id": "corr-1"}


HOOK = Destination("3", "7", "hook", "webhook", {"url": "http://x"}, {"signing_secrets": []})
POSTHOG = Destination("4", "7", "ph", "posthog", {"host": "http://y"}, {"api_key": "k"})
DEPLOYMENT = Destination("5", None, "deployment-webhook", "webhook", {"url": "http://z"})
OTHER_BRAND = Destination("6", "8", "hook", "webhook", {"url": "http://o"})
DISABLED = Destination("9", "7", "old", "webhook", state="disabled", disabled_reason="HTTP 410")


def test_one_work_item_per_destination_of_the_brand_and_the_deployment() -> None:
    dispatcher = dispatcher_with(HOOK, POSTHOG, DEPLOYMENT, OTHER_BRAND, DISABLED)
    works = dispatcher.prepare(source_of(seed_envelope()))
    assert not isinstance(works, Skip)
    assert [(w.key, w.target) for w in works] == [("3:7:user-123", "3"), ("4:7:user-123", "4"),
                                                  ("5:7:user-123", "5")]
    hook, posthog, deployment = works
    assert isinstance(hook.payload, WebhookMessage) and hook.payload is deployment.payload
    assert hook.payload.event_id == "01HYB2K5J4X8Q6V9M3N7P1R2S4"
    assert orjson.loads(hook.payload.body)["organization_id"] == "7"
    assert orjson.loads(posthog.payload)["uuid"] == "5e342cbe-9e96-5b3d-afdd-37971640a260"
    assert hook.size == len(hook.payload.body) and posthog.size == len(posthog.payload)
    assert dispatcher.stats.lag("3") == 1 and dispatcher.stats.lag("6") == 0


def test_preparing_twice_gives_the_same_work() -> None:
    dispatcher = dispatcher_with(HOOK, POSTHOG)
    first = dispatcher.prepare(source_of(seed_envelope()))
    again = dispatcher.prepare(source_of(seed_envelope()))
    assert not isinstance(first, Skip) and not isinstance(again, Skip)
    assert [(w.key, w.target, w.payload, w.size) for w in first] == [
        (w.key, w.target, w.payload, w.size) for w in again]
    assert dispatcher.stats.lag("3") == 1  # the same offset, counted once


def test_a_brand_without_destinations_is_skipped() -> None:
    assert dispatcher_with(OTHER_BRAND).prepare(source_of(seed_envelope())) == Skip("no_destination")


def test_a_dead_letter_replay_goes_to_its_own_destination_only() -> None:
    dispatcher = dispatcher_with(HOOK, POSTHOG, DEPLOYMENT)
    works = dispatcher.prepare(source_of(seed_envelope(), (("dlq_replay_destination", b"posthog:4"),)))
    assert not isinstance(works, Skip)
    assert [w.target for w in works] == ["4"]


def test_the_configured_retry_window_is_at_least_24_hours_and_the_timeout_15_seconds() -> None:
    settings = DispatcherSettings()
    assert settings.seconds("dispatcher_retry_window") >= 24 * 3600
    assert settings.seconds("dispatcher_webhook_timeout") == 15.0
    assert settings.dispatcher_webhook_concurrency == 32

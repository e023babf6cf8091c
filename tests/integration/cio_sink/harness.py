"""Drives a cio-sink in-process against real Kafka and Postgres, delivering to the Customer.io fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.fake import CustomerIoFake
from synergy_cio_sink.service import running_sink
from synergy_cio_sink.sink import CioSink
from ulid import ULID

SEED_EXAMPLES = Path(__file__).parents[2] / "fixtures" / "seed_examples"
SITE_ID, API_KEY = "site-test", "key-test"


def seed_events() -> list[dict[str, Any]]:
    """Seed 000/001 track events (name + identifiers + data), from the extracted seed examples."""
    events = []
    for path in sorted(SEED_EXAMPLES.glob("00[01]_*.json")):
        example = json.loads(path.read_text())
        if isinstance(example, dict) and example.get("name") and "identifiers" in example:
            events.append(example)
    return events


def make_envelope(brand_id: str, user: str | None, name: str = "product_scanned",
                  data: dict[str, Any] | None = None, anonymous_id: str | None = None, event_type: str = "track",
                  event_id: str | None = None) -> dict[str, Any]:
    identifiers = {"id": user} if user else {"anonymous_id": anonymous_id}
    return {
        "event_id": event_id or str(ULID()), "type": event_type, "name": name, "brand_id": brand_id,
        "identifiers": identifiers, "data": data if data is not None else {"n": 1},
        "timestamp": "2024-05-22T18:35:12Z", "received_at": "2024-05-22T18:35:13Z",
        "schema_version": 1, "source": "test", "correlation_id": str(uuid.uuid4()),
    }


@dataclass
class SinkHarness:
    fake: CustomerIoFake
    producer: AIOKafkaProducer
    brand_id: str
    topics: dict[str, str]
    settings: SinkSettings
    sinks: list[tuple[CioSink, asyncio.Task[None], contextlib.AsyncExitStack]] = field(default_factory=list)

    def envelope(self, user: str | None, name: str = "product_scanned", data: dict[str, Any] | None = None,
                 anonymous_id: str | None = None, event_type: str = "track", event_id: str | None = None,
                 ) -> dict[str, Any]:
        return make_envelope(self.brand_id, user, name, data, anonymous_id, event_type, event_id)

    async def publish(self, envelopes: list[dict[str, Any]], topic: str = "events") -> list[str]:
        futures = []
        for envelope in envelopes:
            user = envelope["identifiers"].get("id") or "anon:" + envelope["identifiers"]["anonymous_id"]
            futures.append(await self.producer.send(
                self.topics[topic], json.dumps(envelope).encode(), key=f"{self.brand_id}:{user}".encode(),
            ))
        await asyncio.gather(*futures)
        return [envelope["event_id"] for envelope in envelopes]

    async def start_sink(self, **overrides: Any) -> CioSink:
        settings = self.settings.model_copy(update=overrides)
        stack = contextlib.AsyncExitStack()
        sink = await stack.enter_async_context(running_sink(settings))
        task = asyncio.create_task(sink.run())
        self.sinks.append((sink, task, stack))
        return sink

    async def stop_sink(self, sink: CioSink) -> None:
        """Stop it and leave the consumer group (its Kafka clients are closed)."""
        for candidate, task, stack in list(self.sinks):
            if candidate is sink:
                sink.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 30)
                await stack.aclose()
                self.sinks.remove((candidate, task, stack))

    async def stop_all(self) -> None:
        for sink, _, _ in list(self.sinks):
            await self.stop_sink(sink)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"fake has {len(self.fake.events)} events, {self.fake.statuses}")
            await asyncio.sleep(0.05)

    async def delivered(self, event_ids: list[str], timeout: float = 30.0) -> None:
        wanted = set(event_ids)
        await self.wait_for(lambda: wanted <= set(self.fake.events), timeout, f"{len(wanted)} events")

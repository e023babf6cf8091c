"""Drives the dispatcher in-process against real Kafka and Postgres, to the local fake receivers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from synergy_common.brands import CredentialCipher, create_brand
from synergy_dispatcher import store
from synergy_dispatcher.app import Running, serving
from synergy_dispatcher.settings import DispatcherSettings
from ulid import ULID

from tests.fakes.http_server import Response
from tests.fakes.posthog import PostHogFake
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.support import free_port, service_process

SEED_EXAMPLES = Path(__file__).parents[2] / "fixtures" / "seed_examples"
SECRET = "whsec_" + "c3luZXJneS1kaXNwYXRjaGVyLXRlc3Qtc2VjcmV0"  # base64 of "synergy-dispatcher-test-secret"
PREVIOUS_SECRET = "whsec_" + "b2xkLWRpc3BhdGNoZXItdGVzdC1zZWNyZXQ="  # "old-dispatcher-test-secret"
POSTHOG_KEY = "phc_test_project_key"


def seed_000_events() -> list[dict[str, Any]]:
    """Seed 000's eight examples (name, identifiers, data, timestamp)."""
    return [json.loads(p.read_text()) for p in sorted(SEED_EXAMPLES.glob("000_*.json"))]


def make_envelope(brand_id: str, user: str | None, name: str = "product_scanned",
                  data: dict[str, Any] | None = None, anonymous_id: str | None = None,
                  event_type: str = "track", timestamp: str = "2024-05-22T18:35:12Z",
                  source: str = "ingest") -> dict[str, Any]:
    identifiers = {"id": user} if user else {"anonymous_id": anonymous_id}
    return {
        "event_id": str(ULID()), "type": event_type, "name": name, "brand_id": brand_id,
        "identifiers": identifiers, "data": data if data is not None else {"n": 1},
        "timestamp": timestamp, "received_at": "2024-05-22T18:35:13Z", "schema_version": 1,
        "source": source, "correlation_id": str(uuid.uuid4()),
    }


def user_events(brand_id: str, count: int, users: int, first: int = 0) -> list[dict[str, Any]]:
    """`count` events of the brand, `data.n` numbered from `first`, event n by user `u{n % users}`."""
    return [make_envelope(brand_id, f"u{n % users}", data={"n": n}) for n in range(first, first + count)]


def event_ids(envelopes: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in envelopes]


def per_user(ids_in_order: list[str], envelopes: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The event ids grouped by user, each user's in the order given."""
    user_of = {e["event_id"]: e["identifiers"]["id"] for e in envelopes}
    order: dict[str, list[str]] = defaultdict(list)
    for event_id in ids_in_order:
        order[user_of[event_id]].append(event_id)
    return dict(order)


def unavailable(retry_after: str = "1") -> Response:
    """An endpoint in maintenance: 503 with Retry-After."""
    return Response(503, b'{"error":"maintenance"}', {"retry-after": retry_after})


@dataclass(frozen=True)
class Brand:
    brand_id: str
    write_key: str


def key_of(envelope: dict[str, Any]) -> bytes:
    identifiers = envelope["identifiers"]
    user = identifiers.get("id") or "anon:" + identifiers["anonymous_id"]
    return f"{envelope['brand_id']}:{user}".encode()


@dataclass
class DispatcherHarness:
    kafka_bootstrap: str
    database_url: str
    encryption_key: str
    producer: AIOKafkaProducer
    pool: asyncpg.Pool
    topics: dict[str, str]
    group_id: str = field(default_factory=lambda: f"dispatcher-test-{uuid.uuid4().hex[:8]}")
    fakes: list[Any] = field(default_factory=list)

    def settings(self, **overrides: Any) -> DispatcherSettings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.kafka_bootstrap, "database_url": self.database_url,
            "synergy_encryption_key": self.encryption_key, "dispatcher_group_id": self.group_id,
            "dispatcher_topics": ",".join([self.topics["events"], self.topics["loyalty"],
                                           self.topics["marketing"]]),
            "dispatcher_retry_base": "200ms", "dispatcher_retry_cap": "2s", "dispatcher_retry_window": "24h",
            "dispatcher_retry_attempts": 12, "dispatcher_paused_retry": "1s",
            "dispatcher_reload_interval": "500ms", "dispatcher_status_interval": "500ms",
            "dispatcher_webhook_timeout": "5s", "dispatcher_replica": "test",
        }
        values.update(overrides)
        return DispatcherSettings(**values)

    @contextlib.asynccontextmanager
    async def running(self, **overrides: Any) -> AsyncIterator[Running]:
        async with serving(self.settings(**overrides)) as running:
            yield running

    async def brand(self) -> tuple[str, str]:
        created = await create_brand(self.pool, f"dispatch-{uuid.uuid4().hex[:8]}",
                                     CredentialCipher(self.encryption_key))
        return created.brand_id, created.write_key

    async def webhook(self, brand_id: str, secrets: list[str] | None = None, name: str = "hook",
                      in_maintenance: bool = False) -> tuple[str, WebhookReceiver]:
        """A webhook destination and its receiver; `in_maintenance`: it answers 503 (Retry-After: 1)
        until its responder is reset."""
        receiver = await WebhookReceiver(secrets or [SECRET]).start()
        if in_maintenance:
            receiver.responder = lambda _: unavailable()
        self.fakes.append(receiver)
        destination_id = await store.add_destination(
            self.pool, CredentialCipher(self.encryption_key), brand_id, name, "webhook", {"url": receiver.url},
            {"signing_secrets": secrets or [SECRET]})
        return destination_id, receiver

    async def posthog(self, brand_id: str, name: str = "posthog") -> tuple[str, PostHogFake]:
        fake = await PostHogFake({POSTHOG_KEY}).start()
        self.fakes.append(fake)
        destination_id = await store.add_destination(
            self.pool, CredentialCipher(self.encryption_key), brand_id, name, "posthog", {"host": fake.host},
            {"api_key": POSTHOG_KEY})
        return destination_id, fake

    async def publish(self, envelopes: list[dict[str, Any]], topic: str = "events") -> list[str]:
        futures = [await self.producer.send(self.topics[topic], json.dumps(e).encode(), key=key_of(e))
                   for e in envelopes]
        await asyncio.gather(*futures)
        return [e["event_id"] for e in envelopes]

    async def publish_raw(self, value: bytes, key: bytes, topic: str = "events") -> None:
        await (await self.producer.send(self.topics[topic], value, key=key))

    async def dead_letters(self, brand_id: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT reason, detail, destination, event_id, source_topic, source_offset, brand_id
               FROM dlq_messages WHERE service = 'dispatcher' AND source_topic = ANY($1::text[])
               ORDER BY id""", list(self.topics.values()))
        return [dict(r) for r in rows if brand_id is None or str(r["brand_id"]) == brand_id
                or r["brand_id"] is None]

    async def close(self) -> None:
        for fake in self.fakes:
            with contextlib.suppress(Exception):
                await fake.stop()


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
                     what: str = "the condition") -> None:
    """Wait until `check()` is truthy (it may be async)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"waited {timeout:.0f}s for {what}; last: {last!r}")


async def committed(h: DispatcherHarness) -> int:
    """The consumer group's committed offsets on the events topic, summed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=h.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(h.group_id)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == h.topics["events"] and meta.offset > 0)


async def committed_is(h: DispatcherHarness, count: int) -> bool:
    return await committed(h) == count


def dispatcher_process(h: DispatcherHarness, extra_env: dict[str, str] | None = None,
                       ) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """`python -m synergy_dispatcher` on the harness's topics and database; SIGTERM (then SIGKILL) on exit."""
    settings = h.settings()
    env = {"KAFKA_BOOTSTRAP_SERVERS": h.kafka_bootstrap, "DATABASE_URL": h.database_url,
           "SYNERGY_ENCRYPTION_KEY": h.encryption_key, "DISPATCHER_TOPICS": settings.dispatcher_topics,
           "DISPATCHER_GROUP_ID": h.group_id, "DISPATCHER_PORT": str(free_port()),
           "DISPATCHER_HOST": "127.0.0.1", "DISPATCHER_RETRY_BASE": "200ms", "DISPATCHER_RETRY_CAP": "1s",
           "SYNERGY_TOPIC_DLQ": h.topics["dlq"], "LOG_LEVEL": "WARNING", **(extra_env or {})}
    return service_process("synergy_dispatcher", env)

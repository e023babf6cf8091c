"""What each destination receives for an envelope. Pure: no Kafka, HTTP or database.

- webhook: seed 002's outbox envelope (DESIGN.md, "Destinations");
- posthog: one item of PostHog's `/batch/` capture API.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

# PostHog deduplicates on uuid (+ event, timestamp, distinct_id); a fixed namespace makes the uuid a
# function of the event id alone, so a redelivery after a crash is the same row to PostHog.
EVENT_UUID_NAMESPACE = uuid.UUID("6f1c2b1e-3d4a-5b6c-9d7e-8f9a0b1c2d3e")
_NAMESPACE_BYTES = EVENT_UUID_NAMESPACE.bytes

POSTHOG_EVENT_NAMES = {"identify": "$identify", "page": "$pageview", "screen": "$screen"}

# The entity an event is about (seed 002's entity_type / entity_id), from the data it carries.
ENTITY_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("achievement", ("achievement_data", "achievement_id")),
    ("reward", ("reward_data", "reward_id")),
    ("referral", ("referral_data", "referral_code")),
    ("product", ("product_snapshot", "identity", "product_id")),
    ("product", ("product_id",)),
)


def user_of(envelope: Mapping[str, Any]) -> str:
    """The user the event belongs to: `identifiers.id`, else its `anonymous_id`."""
    identifiers = envelope.get("identifiers") or {}
    return str(identifiers.get("id") or identifiers.get("anonymous_id") or "")


def order_key(destination_id: str, envelope: Mapping[str, Any]) -> str:
    """Per-user order holds per destination: `destination:brand:user` (anonymous ids kept apart)."""
    identifiers = envelope.get("identifiers") or {}
    user = identifiers.get("id")
    user = str(user) if user else "anon:" + str(identifiers.get("anonymous_id") or "")
    return f"{destination_id}:{envelope['brand_id']}:{user}"


def event_name(envelope: Mapping[str, Any]) -> str:
    return str(envelope.get("name") or envelope.get("type") or "track")


def entity_of(envelope: Mapping[str, Any]) -> tuple[str, str]:
    data = envelope.get("data") or {}
    for entity_type, path in ENTITY_PATHS:
        value: Any = data
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if value not in (None, ""):
            return entity_type, str(value)
    return "user", user_of(envelope)


def webhook_payload(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """Seed 002's envelope: the outbox row's fields, `properties` being the event's data."""
    entity_type, entity_id = entity_of(envelope)
    return {
        "event_id": str(envelope["event_id"]),
        "event_name": event_name(envelope),
        "occurred_at": envelope.get("timestamp"),
        "organization_id": str(envelope["brand_id"]),
        "user_id": user_of(envelope),
        "entity_type": entity_type,
        "entity_id": entity_id,
        "correlation_id": envelope.get("correlation_id"),
        "source": envelope.get("source"),
        "schema_version": envelope.get("schema_version", 1),
        "properties": envelope.get("data") or {},
    }


def webhook_body(envelope: Mapping[str, Any]) -> bytes:
    return orjson.dumps(webhook_payload(envelope))


def event_uuid(event_id: str) -> str:
    """`str(uuid.uuid5(EVENT_UUID_NAMESPACE, event_id))` without the UUID object (a fifth of prepare)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + str(event_id).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def posthog_item(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """One `/batch/` item: the event's data as properties, the brand as a group, its own timestamp."""
    raw_data = envelope.get("data") or {}
    data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {"data": raw_data}
    kind = str(envelope.get("type") or "track")
    properties: dict[str, Any] = dict(data)
    properties["$groups"] = {"brand": str(envelope["brand_id"])}
    properties["synergy_event_id"] = str(envelope["event_id"])
    if envelope.get("correlation_id"):
        properties["correlation_id"] = envelope["correlation_id"]
    if kind == "identify":
        raw_traits = data.get("traits")
        traits: Mapping[str, Any] = raw_traits if isinstance(raw_traits, Mapping) else data
        properties = {"$set": dict(traits), "$groups": properties["$groups"],
                      "synergy_event_id": properties["synergy_event_id"]}
        name = "$identify"
    elif kind in POSTHOG_EVENT_NAMES:
        name = POSTHOG_EVENT_NAMES[kind]
        if envelope.get("name"):
            properties["$screen_name" if kind == "screen" else "name"] = envelope["name"]
    else:
        name = event_name(envelope)
    return {
        "event": name,
        "distinct_id": user_of(envelope),
        "properties": properties,
        "timestamp": envelope.get("timestamp"),
        "uuid": event_uuid(str(envelope["event_id"])),
    }


def posthog_item_bytes(envelope: Mapping[str, Any]) -> bytes:
    return orjson.dumps(posthog_item(envelope))


def posthog_request_chunks(items: list[bytes], max_request_bytes: int) -> list[list[int]]:
    """Indexes of `items` grouped so that each `/batch/` body stays within `max_request_bytes`."""
    overhead = 128  # {"api_key": "...", "batch": [...]} around the items
    chunks: list[list[int]] = []
    current: list[int] = []
    size = overhead
    for index, item in enumerate(items):
        if current and size + len(item) + 1 > max_request_bytes:
            chunks.append(current)
            current, size = [], overhead
        current.append(index)
        size += len(item) + 1
    if current:
        chunks.append(current)
    return chunks


def posthog_batch_body(api_key: str, items: list[bytes]) -> bytes:
    return b'{"api_key":' + orjson.dumps(api_key) + b',"batch":[' + b",".join(items) + b"]}"

"""Segment's HTTP Tracking API messages, mapped onto our client event shape. Pure: no I/O.

Segment fields: type, userId / anonymousId, event (track), name (page, screen), properties,
traits (identify), context, messageId, timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synergy_ingest.client_events import EventRejected

SEGMENT_TYPES = ("track", "identify", "page", "screen")


@dataclass(frozen=True)
class SegmentMessage:
    """A Segment message turned into our client event, plus the request facts its context carries."""

    client_event: dict[str, Any]
    user_agent: str | None
    client_ip: str | None


def _identifier(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventRejected(field, "must be a string", reason="invalid")
    return str(value)


def _object(message: dict[str, Any], field: str) -> dict[str, Any]:
    value = message.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventRejected(field, "must be an object", reason="invalid")
    return value


def segment_to_client_event(message: Any, route_type: str | None = None) -> SegmentMessage:
    if not isinstance(message, dict):
        raise EventRejected("body", "a message must be a JSON object", reason="malformed")
    message_type = message.get("type", route_type)
    if route_type is not None and message_type != route_type:
        raise EventRejected("type", f"this route takes '{route_type}' messages", reason="invalid")
    if message_type not in SEGMENT_TYPES:
        raise EventRejected(
            "type",
            f"unsupported type {message_type!r}; supported: {', '.join(SEGMENT_TYPES)}",
            reason="unsupported_type",
        )
    user_id = _identifier(message.get("userId"), "userId")
    anonymous_id = _identifier(message.get("anonymousId"), "anonymousId")
    if user_id is None and anonymous_id is None:
        raise EventRejected("userId", "userId or anonymousId is required", reason="invalid")
    identifiers = {k: v for k, v in (("id", user_id), ("anonymous_id", anonymous_id)) if v is not None}

    event: dict[str, Any] = {"type": message_type, "identifiers": identifiers}
    if message.get("messageId") is not None:
        event["event_id"] = message["messageId"]
    if message.get("timestamp") is not None:
        event["timestamp"] = message["timestamp"]
    if message_type == "track":
        event["name"] = message.get("event")
        event["data"] = _object(message, "properties")
    elif message_type == "identify":
        event["data"] = _object(message, "traits")
    else:
        if message.get("name") is not None:
            event["name"] = message["name"]
        event["data"] = _object(message, "properties")

    context = _object(message, "context")
    user_agent = context.get("userAgent")
    client_ip = context.get("ip")
    return SegmentMessage(
        client_event=event,
        user_agent=user_agent if isinstance(user_agent, str) else None,
        client_ip=client_ip if isinstance(client_ip, str) else None,
    )

"""From a client's event JSON to the envelope that goes to Kafka. Pure: no I/O.

`build_envelope` is the whole decision: validate, canonicalise the name, derive the event id,
stamp the request's facts, and fill what the request tells about the device and address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from synergy_schemas.envelope import SCHEMA_VERSION, EventType, Identifiers, derive_event_id, kafka_headers
from synergy_schemas.envelope import Envelope as Envelope
from synergy_schemas.envelope import _json_default as envelope_json_default
from synergy_schemas.events import (
    ReservedEventError,
    UnknownEventError,
    check_event_data,
)
from synergy_schemas.keys import partition_key

from synergy_ingest.device import device_from_user_agent
from synergy_ingest.publish_outcome import OutgoingRecord
from synergy_ingest.request_context import RequestContext

MAX_FREE_FORM_KEYS = 300
# C0 and C1 control characters (NUL included) and the Unicode line and paragraph separators.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# The same three headers for every event of one name in a request: built once, the list shared by its
# records (nothing changes a record's headers once built).
record_headers = lru_cache(maxsize=1024)(kafka_headers)


class ClientEvent(BaseModel):
    """One event as a client posts it to /v1/events: the seeds' shape, plus optional ids."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(default=None, min_length=1, max_length=100)
    type: EventType = "track"
    name: str | None = Field(default=None, min_length=1, max_length=100)
    brand_id: str | None = Field(default=None, max_length=64)
    identifiers: Identifiers
    data: dict[str, Any] = Field(default_factory=dict)
    timestamp: AwareDatetime | None = None


class EventRejected(Exception):
    """An event refused, naming the failing field; `reason` labels the rejection metric."""

    def __init__(self, field: str, message: str, reason: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.reason = reason
        self.status = status


def _dotted(location: tuple[Any, ...], prefix: str = "") -> str:
    path = prefix
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _first_error(exc: ValidationError, prefix: str = "") -> EventRejected:
    error = exc.errors()[0]
    return EventRejected(_dotted(tuple(error["loc"]), prefix), error["msg"], reason="invalid")


def parse_client_event(raw: Any) -> ClientEvent:
    if not isinstance(raw, dict):
        raise EventRejected("body", "an event must be a JSON object", reason="malformed")
    try:
        event = ClientEvent.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from exc
    return event


def refuse_control_characters(event: ClientEvent) -> None:
    """Ids and names end up in partition keys, URLs and Customer.io ids: they must be printable."""
    for field, value in (
        ("identifiers.id", event.identifiers.id),
        ("identifiers.anonymous_id", event.identifiers.anonymous_id),
        ("event_id", event.event_id),
        ("name", event.name),
        ("brand_id", event.brand_id),
    ):
        if value is not None and CONTROL_CHARACTERS.search(value):
            raise EventRejected(field, "must not contain control characters", reason="invalid")


def validated_data(event: ClientEvent) -> tuple[str | None, dict[str, Any]]:
    """The canonical event name and the normalised data for this event's type."""
    if event.type != "track":
        if len(event.data) > MAX_FREE_FORM_KEYS:
            raise EventRejected("data", f"at most {MAX_FREE_FORM_KEYS} keys", reason="invalid")
        return event.name, event.data
    if event.name is None:
        raise EventRejected("name", "a track event needs a name", reason="invalid")
    try:
        return check_event_data(event.name, event.data), event.data
    except UnknownEventError as exc:
        raise EventRejected("name", str(exc), reason="unknown_event") from exc
    except ReservedEventError as exc:
        raise EventRejected("name", str(exc), reason="reserved_event") from exc
    except ValidationError as exc:
        raise _first_error(exc, prefix="data") from exc


def with_request_facts(data: dict[str, Any], user_agent: str | None, client_ip: str | None) -> dict[str, Any]:
    """Fill event_context.device and event_context.location.ip_address where the client left them out."""
    context = data.get("event_context")
    if context is None:
        context = {}
    device_missing = not context.get("device") and user_agent
    ip_missing = not (context.get("location") or {}).get("ip_address") and client_ip
    if not device_missing and not ip_missing:
        return data
    context = dict(context)
    if device_missing:
        context["device"] = device_from_user_agent(user_agent)
    if ip_missing:
        context["location"] = {**(context.get("location") or {}), "ip_address": client_ip}
    return {**data, "event_context": context}


# Not frozen: a frozen dataclass's __init__ costs three times as much, and one is built per event.
@dataclass(slots=True)
class AcceptedEvent(OutgoingRecord):
    """A validated event: its Kafka record (serialised once), its id and type. It is the record the
    publisher sends, so a batch builds one object an event. `envelope` reads the model back from the
    record (tests, tools)."""

    event_id: str
    type: str

    @property
    def record(self) -> OutgoingRecord:
        return self

    @property
    def envelope(self) -> Envelope:
        return Envelope.from_json_bytes(self.value)


def build_envelope(raw: Any, request: RequestContext, max_event_bytes: int) -> Envelope:
    """parse_client_event, then accept_event: the whole path of one event already parsed from JSON."""
    return accept_event(parse_client_event(raw), request, max_event_bytes).envelope


def accept_event(event: ClientEvent, request: RequestContext, max_event_bytes: int) -> AcceptedEvent:
    """Checks what the model alone cannot (brand, event data, size) and builds the record."""
    refuse_control_characters(event)
    if event.brand_id is not None and event.brand_id != request.brand_id:
        raise EventRejected("brand_id", "this write key does not act for that brand", "forbidden", 403)
    name, data = validated_data(event)
    if event.type == "track":
        data = with_request_facts(data, request.user_agent, request.client_ip)
    fields: dict[str, Any] = {
        "event_id": derive_event_id(request.brand_id, event.event_id, at=request.received_at),
        "type": event.type,
        "name": name,
        "brand_id": request.brand_id,
        "identifiers": event.identifiers,
        "data": data,
        "timestamp": event.timestamp or request.received_at,
        "received_at": request.received_at,
        "source": request.source,
        "correlation_id": request.correlation_id,
    }
    value = envelope_json_bytes(fields)
    if len(value) > max_event_bytes:
        raise EventRejected("body", f"an event may be at most {max_event_bytes} bytes", reason="too_large")
    identifiers = event.identifiers
    return AcceptedEvent(
        partition_key(request.brand_id, identifiers.id, identifiers.anonymous_id).encode(),
        value,
        record_headers(name or event.type, SCHEMA_VERSION, request.correlation_id),
        fields["event_id"],
        event.type,
    )


def envelope_json_bytes(fields: dict[str, Any]) -> bytes:
    """Byte for byte what Envelope.to_json_bytes writes for these fields, without building the model."""
    identifiers: Identifiers = fields["identifiers"]
    body: dict[str, Any] = {"event_id": fields["event_id"], "type": fields["type"]}
    if fields["name"] is not None:
        body["name"] = fields["name"]
    body["brand_id"] = fields["brand_id"]
    ids: dict[str, str] = {}
    if identifiers.id is not None:
        ids["id"] = identifiers.id
    if identifiers.anonymous_id is not None:
        ids["anonymous_id"] = identifiers.anonymous_id
    body["identifiers"] = ids
    body["data"] = fields["data"]
    body["timestamp"] = fields["timestamp"]
    body["received_at"] = fields["received_at"]
    body["schema_version"] = SCHEMA_VERSION
    body["source"] = fields["source"]
    body["correlation_id"] = fields["correlation_id"]
    return orjson.dumps(body, default=envelope_json_default, option=orjson.OPT_UTC_Z)

"""A native fast path for whole requests on the native event routes. Pure: no I/O.

`msgspec` decodes the request body in one pass into typed Structs (the events' own fields checked
in C, `data` kept as raw bytes), each event's `data` is checked by its client event's Struct
(`synergy_schemas.fast_events`), and the envelope is encoded from a Struct with the raw `data`
bytes passed through: no intermediate dicts, no pydantic.

It accepts a subset of what the strict path (`client_events`: pydantic, then the checks of
`accept_event`) accepts, and builds the same records. Anything it does not take whole (a rejection,
a forbidden brand, an unknown or reserved name, a type other than track, an oversized envelope, a
timestamp outside RFC 3339's plain form) returns None, and the request goes to the strict path,
which decides and names the field. `tests/unit/ingest/test_fast_batch.py` compares both paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import orjson
from msgspec import Meta, Raw, Struct
from synergy_schemas.envelope import MAX_ID_LENGTH, SCHEMA_VERSION, derive_event_id, ulid_text
from synergy_schemas.events import EVENT_ALIASES, RESERVED_EVENTS
from synergy_schemas.fast_events import FAST_CLIENT_EVENT_DATA, DeviceContext

from synergy_ingest.client_events import (
    AcceptedEvent,
    envelope_json_bytes,
    record_headers,
    with_request_facts,
)
from synergy_ingest.request_context import RequestContext

# No C0 or C1 control character (NUL included), no Unicode line or paragraph separator
# (client_events.CONTROL_CHARACTERS); `\Z`, as `$` would also match before a final newline.
# Checked after the decode (`_printable`), not as a msgspec pattern: a pattern is a call into `re`
# for every string (0.2 to 0.3 us each, four an event), `str.isprintable` is 0.06 and implies it.
_PRINTABLE = re.compile("^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\\Z")
# RFC 3339 with a `T`, seconds, at most 6 decimals and a `Z` or an offset: a form pydantic's
# AwareDatetime and datetime.fromisoformat read alike. Other forms go to the strict path. Checked as
# the string's shape once every ASCII digit is a 0 (a bytes translation and a set lookup, 0.2 us
# against the pattern's 0.5): `^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?
# (Z|[+-][0-9]{2}:[0-9]{2})\Z`, the set below written out.
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
_PLAIN_TIMESTAMP_SHAPES = frozenset(
    b"0000-00-00T00:00:00" + fraction + zone
    for fraction in [b"", *(b"." + b"0" * places for places in range(1, 7))]
    for zone in (b"Z", b"+00:00", b"-00:00")
)

Identifier = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class FastIdentifiers(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    id: Identifier | None = None
    anonymous_id: Identifier | None = None


class FastClientEvent(Struct, forbid_unknown_fields=True, gc=False):
    """client_events.ClientEvent, with `data` left as its raw JSON text."""

    identifiers: FastIdentifiers
    event_id: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    type: Literal["track", "identify", "page", "screen"] = "track"
    name: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    brand_id: Annotated[str, Meta(max_length=64)] | None = None
    data: Raw = Raw(b"{}")
    timestamp: str | None = None


class FastBatch(Struct, gc=False):
    """The batch body. Unknown top-level keys are ignored, as `_batch_items` ignores them."""

    batch: list[FastClientEvent]


class FastEnvelope(Struct, kw_only=True, omit_defaults=True, gc=False):
    """Encodes as Envelope.to_json_bytes writes, with `data` passed through as the client wrote it."""

    event_id: str
    type: str
    name: str | None = None
    brand_id: str
    identifiers: FastIdentifiers
    data: Raw
    timestamp: datetime
    received_at: datetime
    schema_version: int
    source: str
    correlation_id: str


BATCH_DECODER = msgspec.json.Decoder(FastBatch)
EVENT_DECODER = msgspec.json.Decoder(FastClientEvent)
_DATA_DECODERS = {
    name: msgspec.json.Decoder(struct)
    for name, struct in FAST_CLIENT_EVENT_DATA.items()
    if name not in RESERVED_EVENTS
}
_ENCODER = msgspec.json.Encoder()
_Item = TypeVar("_Item")


def fast_batch(
    body: bytes, request: RequestContext, max_events: int, max_event_bytes: int
) -> list[AcceptedEvent] | None:
    """Every event of the batch accepted, in order; None when the strict path must decide."""
    batch = _decode(BATCH_DECODER, body)
    if batch is None:
        return None
    return _accept_whole(batch.batch, _accept_client_event, request, max_events, max_event_bytes)


def fast_event(body: bytes, request: RequestContext, max_event_bytes: int) -> AcceptedEvent | None:
    """The single event accepted; None when the strict path must decide."""
    event = _decode(EVENT_DECODER, body)
    return None if event is None else _accept_client_event(event, request, max_event_bytes)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """The body as Structs, or None. msgspec skips the values of unknown keys (and keeps Raw ones)
    without checking their UTF-8, which orjson refuses with a 400: the whole body is checked here."""
    try:
        body.decode()
        return decoder.decode(body)
    except (UnicodeDecodeError, msgspec.DecodeError):
        return None


def _accept_client_event(
    event: FastClientEvent, request: RequestContext, max_event_bytes: int
) -> AcceptedEvent | None:
    brand_id = event.brand_id
    if event.type != "track" or (
        brand_id is not None and (brand_id != request.brand_id or not _printable(brand_id))
    ):
        return None
    return _accept_track(
        event.identifiers, event.event_id, event.name, event.data, event.timestamp, request, max_event_bytes
    )


# --- the Segment-compatible routes: track messages (segment.segment_to_client_event) ---------------

SegmentIdentifier = Annotated[str, Meta(max_length=MAX_ID_LENGTH)]


class FastSegmentContext(Struct, gc=False):
    userAgent: Any = None
    ip: Any = None


class FastSegmentTrack(Struct, gc=False):
    """A Segment track message (Segment's field names): the fields segment_to_client_event reads; it
    ignores the others (integrations, sentAt...), and so does this. userId "" means none, as there."""

    type: Literal["track"] = "track"
    userId: SegmentIdentifier | None = None
    anonymousId: SegmentIdentifier | None = None
    messageId: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    event: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    properties: Raw = Raw(b"{}")
    timestamp: str | None = None
    context: FastSegmentContext | None = None
    writeKey: Any = None


class FastSegmentBatchMessage(FastSegmentTrack, kw_only=True):
    type: Literal["track"]  # a batch's message says its own type


class FastSegmentBatch(Struct, gc=False):
    batch: list[FastSegmentBatchMessage]
    writeKey: Any = None


SEGMENT_TRACK_DECODER = msgspec.json.Decoder(FastSegmentTrack)
SEGMENT_BATCH_DECODER = msgspec.json.Decoder(FastSegmentBatch)


def decode_segment_track(body: bytes) -> FastSegmentTrack | None:
    message: FastSegmentTrack | None = _decode(SEGMENT_TRACK_DECODER, body)
    return message


def decode_segment_batch(body: bytes) -> FastSegmentBatch | None:
    batch: FastSegmentBatch | None = _decode(SEGMENT_BATCH_DECODER, body)
    return batch


def accept_segment_track(
    message: FastSegmentTrack, request: RequestContext, max_event_bytes: int
) -> AcceptedEvent | None:
    user_id, anonymous_id = message.userId or None, message.anonymousId or None
    if user_id is None and anonymous_id is None:
        return None
    context = message.context
    user_agent = context.userAgent if context is not None else None
    client_ip = context.ip if context is not None else None
    message_request = RequestContext(
        brand_id=request.brand_id,
        received_at=request.received_at,
        correlation_id=request.correlation_id,
        user_agent=user_agent if user_agent and isinstance(user_agent, str) else request.user_agent,
        client_ip=client_ip if client_ip and isinstance(client_ip, str) else request.client_ip,
        source="segment",
    )
    return _accept_track(
        FastIdentifiers(user_id, anonymous_id),
        message.messageId,
        message.event,
        message.properties,
        message.timestamp,
        message_request,
        max_event_bytes,
    )


def accept_segment_batch(
    batch: FastSegmentBatch, request: RequestContext, max_events: int, max_event_bytes: int
) -> list[AcceptedEvent] | None:
    return _accept_whole(batch.batch, accept_segment_track, request, max_events, max_event_bytes)


# --- both ---------------------------------------------------------------------------------------


def _accept_whole(
    items: Sequence[_Item],
    accept_one: Callable[[_Item, RequestContext, int], AcceptedEvent | None],
    request: RequestContext,
    max_events: int,
    max_event_bytes: int,
) -> list[AcceptedEvent] | None:
    """Every item accepted, in order; None as soon as one is not (or the batch is empty or too long)."""
    if not items or len(items) > max_events:
        return None
    accepted = []
    for item in items:
        one = accept_one(item, request, max_event_bytes)
        if one is None:
            return None
        accepted.append(one)
    return accepted


def _accept_track(
    identifiers: FastIdentifiers,
    client_event_id: str | None,
    name: str | None,
    raw_data: Raw,
    client_timestamp: str | None,
    request: RequestContext,
    max_event_bytes: int,
) -> AcceptedEvent | None:
    """accept_event for a track event whose own fields the Structs checked."""
    user_id, anonymous_id = identifiers.id, identifiers.anonymous_id
    if name is None or (user_id is None and anonymous_id is None):
        return None
    if not (
        _printable(name)
        and (user_id is None or _printable(user_id))
        and (anonymous_id is None or _printable(anonymous_id))
        and (client_event_id is None or _printable(client_event_id))
    ):
        return None
    name = EVENT_ALIASES.get(name, name)
    decoder = _DATA_DECODERS.get(name)
    if decoder is None:
        return None
    try:
        data = decoder.decode(raw_data)
    except msgspec.DecodeError:  # msgspec.ValidationError is one, and so is a __post_init__ refusal
        return None
    if client_timestamp is None:
        timestamp = request.received_at
    else:
        try:  # a lone surrogate fails encode() with a UnicodeEncodeError, a ValueError
            if client_timestamp.encode().translate(_DIGITS_TO_ZERO) not in _PLAIN_TIMESTAMP_SHAPES:
                return None
            timestamp = datetime.fromisoformat(client_timestamp)
        except ValueError:
            return None
    if client_event_id is None:  # derive_event_id's fresh ULID: the request's millisecond, 80 random bits
        event_id = ulid_text(int(request.received_at.timestamp() * 1000).to_bytes(6) + _RANDOMNESS.take())
    else:
        event_id = derive_event_id(request.brand_id, client_event_id)
    if _needs_request_facts(data.event_context, request):
        # Rare (the client left the device or address out): the data as a dict, as the strict path does.
        value = envelope_json_bytes(
            {
                "event_id": event_id,
                "type": "track",
                "name": name,
                "brand_id": request.brand_id,
                "identifiers": identifiers,
                "data": with_request_facts(
                    orjson.loads(bytes(raw_data)), request.user_agent, request.client_ip
                ),
                "timestamp": timestamp,
                "received_at": request.received_at,
                "source": request.source,
                "correlation_id": request.correlation_id,
            }
        )
    else:
        value = _ENCODER.encode(
            FastEnvelope(
                event_id=event_id,
                type="track",
                name=name,
                brand_id=request.brand_id,
                identifiers=identifiers,
                data=raw_data,
                timestamp=timestamp,
                received_at=request.received_at,
                schema_version=SCHEMA_VERSION,
                source=request.source,
                correlation_id=request.correlation_id,
            )
        )
    if len(value) > max_event_bytes:
        return None
    brand_id = request.brand_id
    key = f"{brand_id}:{user_id}" if user_id else f"{brand_id}:anon:{identifiers.anonymous_id}"
    return AcceptedEvent(
        key.encode(), value, record_headers(name, SCHEMA_VERSION, request.correlation_id), event_id, "track"
    )


def _printable(value: str) -> bool:
    """No control character (the `_PRINTABLE` pattern). `isprintable` is stricter (it also refuses
    other format and separator characters, U+00A0 among them): only then does the pattern decide."""
    return value.isprintable() or _PRINTABLE.search(value) is not None


class _Randomness:
    """The random part of fresh ULIDs, 10 bytes each, read from the OS 4,096 at a time (python-ulid
    reads them one ULID at a time, and its id costs three times this one's). A forked child starts afresh."""

    BLOCK = 10 * 4096

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0

    def take(self) -> bytes:
        start = self._offset
        if start + 10 > len(self._pool):
            self._pool, start = os.urandom(self.BLOCK), 0
        self._offset = start + 10
        return self._pool[start : start + 10]

    def forget(self) -> None:
        self._pool, self._offset = b"", 0


_RANDOMNESS = _Randomness()
os.register_at_fork(after_in_child=_RANDOMNESS.forget)


def _needs_request_facts(context: Any, request: RequestContext) -> bool:
    """Whether with_request_facts would change this data. An all-null device block cannot be told
    from an empty one here (`{}` is filled, `{"os": null}` is not), so it counts as needing them."""
    if request.user_agent:
        device = None if context is None else context.device
        if device is None or device == _EMPTY_DEVICE:
            return True
    if request.client_ip:
        location = None if context is None else context.location
        if location is None or not location.ip_address:
            return True
    return False


_EMPTY_DEVICE = DeviceContext()

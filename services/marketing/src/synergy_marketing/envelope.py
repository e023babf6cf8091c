"""The envelope fields marketing reads, decoded from a record's value by msgspec into a Struct; the
other fields (received_at, source, context, ...) are skipped, never made into Python objects.

It accepts and refuses exactly what the runtime's default decoder (`decode_envelope`, orjson into a
dict) does, with the same values: what msgspec and orjson could read differently goes through
`decode_envelope` itself (and is then converted), so a refusal carries the same reason and detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from synergy_streaming import Record, decode_envelope


class MarketingEnvelope(msgspec.Struct, gc=False):
    """An envelope's fields marketing reads; a field the envelope lacks reads as its default, which
    is what `envelope.get(name)` gave (`data`: UNSET, told apart from an explicit null)."""

    event_id: Any = None
    brand_id: Any = None
    type: Any = "track"
    name: Any = None
    identifiers: Any = None
    timestamp: Any = None
    data: Any = msgspec.UNSET


_decode_struct = msgspec.json.Decoder(MarketingEnvelope).decode
# orjson reads an integer outside these bounds as a float, msgspec as an int
_INT_MIN, _INT_END = -(2**63), 2**64


def envelope_of(envelope: Mapping[str, Any]) -> MarketingEnvelope:
    """A decoded envelope (a dict, as the default decoder gives it) as marketing's Struct."""
    return msgspec.convert(envelope, MarketingEnvelope)


def decode_marketing_envelope(record: Record) -> MarketingEnvelope:
    """The record's value as a MarketingEnvelope, or Undecodable as `decode_envelope` refuses it.

    msgspec reads it when the value is ASCII (msgspec does not check the UTF-8 of the fields it skips),
    its ids are non-empty strings, its type a string, and no integer of its data is outside 64 bits;
    any other value is decoded by `decode_envelope`.
    """
    value = record.value
    try:
        if type(value) is bytes and value.isascii():
            envelope = _decode_struct(value)
            data = envelope.data
            if (type(envelope.event_id) is str and envelope.event_id and type(envelope.brand_id) is str
                    and envelope.brand_id and type(envelope.type) is str
                    and (type(data) is not dict or not _has_wide_int(data.values()))):
                return envelope
    except (msgspec.DecodeError, RecursionError):  # msgspec's depth limit is not orjson's (1024)
        pass
    return envelope_of(decode_envelope(record))


def _has_wide_int(values: Any) -> bool:
    for value in values:
        kind = type(value)
        if kind is int:
            if not _INT_MIN <= value < _INT_END:
                return True
        elif kind is dict:
            if _has_wide_int(value.values()):
                return True
        elif kind is list and _has_wide_int(value):
            return True
    return False

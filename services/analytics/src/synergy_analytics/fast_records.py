"""A native fast path for `records.process_message`: the message bytes straight to the same `Processed`. Pure.

`process_message` is the definition. This decodes the envelope with msgspec Structs holding only the
fields the log reads (in C, unknown fields skipped), and accepts a subset of what `process_message`
accepts, never more: a message it does not take returns None, and the caller goes the slow way (orjson,
then `process_message`, which decides and says why a message cannot be logged). Where matching the slow
path would need Python, the fast path is stricter and leaves the message to it:

- a field of another JSON type than the one the Structs name (an id that is a float, a balance that is a
  string, a `data` that is not an object ...);
- any `\\u0000` in the message (the slow path rewrites NUL, which jsonb cannot hold);
- the events that change read models (wishlist and referral events);
- an envelope the runtime's decode would refuse (no event id or brand), or one the log cannot take.

`action_data` is the event's own `data` text as sent, not orjson's re-serialisation: the same jsonb value
(jsonb parses it either way; Postgres keeps a number's digits as sent, where a float would round them).
`tests/unit/analytics/test_fast_records.py` checks that both paths give the same result on every seed and on
generated variants.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Raw, Struct

from synergy_analytics.records import (
    ALIASES,
    ENGINE_EVENTS,
    ENGINE_SOURCES,
    MAX_TEXT,
    BalanceSeen,
    LogRow,
    Processed,
    ReadModelChange,
    Unusable,
    parse_time,
)

# orjson reads an integer past 64 bits as a float: such a message (and 2**63 and up) goes the slow way.
Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Id = str | Int
# The names whose read-model changes only the slow path computes (wishlists and referrals).
READ_MODEL_NAMES = frozenset(
    {"wishlist_item_added", "wishlist_item_removed", "referral_initiated", "referral_converted"}
)
INT32 = 2**31 - 1


class _Identity(Struct):
    product_id: Id | None = None
    sku: Id | None = None


class _Product(Struct):
    identity: _Identity | None = None


class _Scan(Struct):
    points_awarded: Int | None = None


class _Location(Struct):
    ip_address: str | None = None


class _Device(Struct):
    user_agent: str | None = None


class _Context(Struct):
    location: _Location | None = None
    device: _Device | None = None


class _Economy(Struct):
    points_balance: Int | None = None


class _SnapshotReferrals(Struct):
    total_referrals_completed: Int | None = None


class _UserSnapshot(Struct):
    economy: _Economy | None = None
    referral_data: _SnapshotReferrals | None = None


class _Data(Struct):
    product_snapshot: _Product | None = None
    product_id: Id | None = None
    points: Int | None = None
    points_awarded: Int | None = None
    scan_data: _Scan | None = None
    event_context: _Context | None = None
    user_snapshot: _UserSnapshot | None = None


class _Identifiers(Struct):
    id: Id | None = None
    anonymous_id: Id | None = None


class _Envelope(Struct):
    event_id: Id
    brand_id: Id
    timestamp: str
    received_at: str | None = None
    type: str | None = None
    name: str | None = None
    source: str | None = None
    identifiers: _Identifiers | None = None
    data: Raw = Raw(b"{}")


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_DATA = msgspec.json.Decoder(_Data)
_EMPTY_DATA = _Data()
_NO_IDENTIFIERS = _Identifiers()


def _text(value: Id | None, limit: int) -> str | None:
    return None if value is None or value == "" else str(value)[:limit]


def _points(data: _Data) -> int:
    scan = data.scan_data
    for value in (data.points, data.points_awarded, scan.points_awarded if scan is not None else None):
        if value is not None:
            return max(min(value, INT32), -INT32 - 1)
    return 0


def _product(data: _Data) -> str | None:
    identity = data.product_snapshot.identity if data.product_snapshot is not None else None
    for candidate in (
        identity.product_id if identity is not None else None,
        identity.sku if identity is not None else None,
        data.product_id,
    ):
        if candidate is not None and candidate != "":
            return str(candidate)[: MAX_TEXT["product_id"]]
    return None


def processed_from_bytes(value: bytes) -> Processed | None:
    """The message as `process_message` would process it, or None: the slow path decides this one."""
    if b"\\u0000" in value:
        return None
    try:
        envelope = _ENVELOPE.decode(value)
    except msgspec.MsgspecError:
        return None
    event_id, brand = envelope.event_id, envelope.brand_id
    if not event_id or not brand:
        return None
    if isinstance(brand, str):
        if not (brand.isascii() and brand.isdigit()):
            return None
        brand_id = int(brand)
    else:
        brand_id = brand
    if not 0 < brand_id < 2**63:
        return None
    raw = bytes(envelope.data)
    if raw == b"{}":
        data = _EMPTY_DATA
    elif raw[:1] != b"{":
        return None
    else:
        try:
            data = _DATA.decode(raw)
        except msgspec.MsgspecError:
            return None
    try:
        occurred_at = parse_time(envelope.timestamp)
        received = envelope.received_at
        if not received:
            received_at = None
        elif received == envelope.timestamp:
            received_at = occurred_at
        else:
            received_at = parse_time(received)
    except Unusable:
        return None
    kind = envelope.type or "track"
    name = ALIASES.get(envelope.name, envelope.name)[: MAX_TEXT["action_type"]] if envelope.name else kind
    if name in READ_MODEL_NAMES:
        return None
    identifiers = envelope.identifiers or _NO_IDENTIFIERS
    user_id = _text(identifiers.id, MAX_TEXT["user_id"])
    context = data.event_context
    location = context.location if context is not None else None
    device = context.device if context is not None else None
    changes: tuple[ReadModelChange, ...] = ()
    snapshot = data.user_snapshot
    if user_id is not None and snapshot is not None and snapshot.economy is not None:
        balance = snapshot.economy.points_balance
        if balance is not None:
            referrals = snapshot.referral_data
            changes = (
                BalanceSeen(user_id, balance, referrals.total_referrals_completed if referrals else None),
            )
    row = LogRow(
        str(event_id)[: MAX_TEXT["event_id"]],
        occurred_at,
        brand_id,
        user_id,
        _text(identifiers.anonymous_id, MAX_TEXT["user_id"]),
        kind[:16],
        name,
        name in ENGINE_EVENTS or (envelope.source or "") in ENGINE_SOURCES,
        raw.decode(),
        _product(data),
        _points(data),
        _text(location.ip_address if location is not None else None, MAX_TEXT["ip_address"]),
        _text(device.user_agent if device is not None else None, 1000),
        received_at,
    )
    return Processed(row, changes)

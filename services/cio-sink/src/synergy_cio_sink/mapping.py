"""Envelope -> Customer.io operation. Pure: no Kafka, HTTP or SQL here.

One envelope becomes one `Delivery`, which carries the same operation in both API shapes
(a v2 batch item and a v1 call) so the transport can pick either by configuration.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

MAX_PERSON_ID_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000

Scalar = str | int | float | bool | None

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# user_snapshot.identity fields that are Customer.io's own special attributes.
_SPECIAL_IDENTITY_KEYS = {"email": "email", "created_at": "created_at"}


@dataclass(frozen=True)
class PrivacySettings:
    """A brand's opt-ins, from brands.settings -> {"privacy": {"hash_emails": .., "truncate_ips": ..}}."""

    hash_emails: bool = False
    truncate_ips: bool = False

    @classmethod
    def from_brand_settings(cls, settings: Mapping[str, Any] | None) -> PrivacySettings:
        privacy = (settings or {}).get("privacy") or {}
        return cls(
            hash_emails=bool(privacy.get("hash_emails", False)),
            truncate_ips=bool(privacy.get("truncate_ips", False)),
        )


@dataclass(frozen=True)
class V1Call:
    method: str
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """One operation for Customer.io, ready in both API shapes."""

    event_id: str
    brand_id: str
    person_key: str
    kind: str  # "event" | "identify" | "page" | "screen"
    v2_item: dict[str, Any]
    v1_call: V1Call
    dropped_attributes: int = 0


@dataclass(frozen=True)
class Rejected:
    """The envelope can never be accepted by Customer.io: it goes to the DLQ with this reason."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Skipped:
    """Nothing to send (e.g. an identify with only an anonymous id, which Customer.io cannot store)."""

    reason: str


MappingResult = Delivery | Rejected | Skipped


# --- privacy -----------------------------------------------------------------------------------


def hash_email(value: str) -> str:
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()


def truncate_ip(value: str) -> str:
    """IPv4 keeps its /24 (last octet zeroed), IPv6 its /48."""
    address = ipaddress.ip_address(value)
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def _is_ip(value: str) -> bool:
    if not (":" in value or value.count(".") == 3):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def apply_privacy(value: Any, privacy: PrivacySettings) -> Any:
    """Hash every e-mail address and truncate every IP address found anywhere in `value`."""
    if not (privacy.hash_emails or privacy.truncate_ips):
        return value
    if isinstance(value, Mapping):
        return {key: apply_privacy(item, privacy) for key, item in value.items()}
    if isinstance(value, list):
        return [apply_privacy(item, privacy) for item in value]
    if isinstance(value, str):
        if privacy.hash_emails and _EMAIL.match(value):
            return hash_email(value)
        if privacy.truncate_ips and _is_ip(value):
            return truncate_ip(value)
    return value


# --- attributes --------------------------------------------------------------------------------


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")


def _unix_seconds(value: str) -> int | None:
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _scalar(name: str, value: Any) -> Scalar:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, list) and all(isinstance(item, str | int | float | bool) for item in value):
        text = ",".join(str(item) for item in value)
    elif isinstance(value, list | dict):
        text = orjson.dumps(value).decode()
    else:
        text = str(value)
    if name.endswith("_at"):
        seconds = _unix_seconds(text)
        if seconds is not None:
            return seconds
    return _truncate_utf8(text, MAX_ATTRIBUTE_VALUE_BYTES)


def _leaves(value: Mapping[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    leaves: list[tuple[tuple[str, ...], Any]] = []
    for key, item in value.items():
        if isinstance(item, Mapping):
            leaves.extend(_leaves(item, (*path, str(key))))
        else:
            leaves.append(((*path, str(key)), item))
    return leaves


@dataclass(frozen=True)
class FlatAttributes:
    attributes: dict[str, Scalar] = field(default_factory=dict)
    dropped: int = 0


def flatten_attributes(snapshot: Mapping[str, Any]) -> FlatAttributes:
    """A nested snapshot as at most 300 scalar attributes.

    A block's field keeps its own name (`economy.points_balance` -> `points_balance`); deeper
    fields, and a name another block already took, are joined by `_`. `identity.email` and
    `identity.created_at` become Customer.io's special `email` and `created_at`. Timestamps in
    fields named `*_at` become unix seconds; lists become comma-joined text.
    """
    attributes: dict[str, Scalar] = {}
    dropped = 0
    for path, value in _leaves(snapshot):
        if len(path) == 2 and path[0] == "identity" and path[1] in _SPECIAL_IDENTITY_KEYS:
            name = _SPECIAL_IDENTITY_KEYS[path[1]]
        elif len(path) <= 2:
            name = path[-1]
        else:
            name = "_".join(path[1:])
        if name in attributes:
            name = "_".join(path)
        if name in attributes or len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES or _EMAIL.match(name):
            dropped += 1
            continue
        if len(attributes) >= MAX_ATTRIBUTES:
            dropped += 1
            continue
        attributes[name] = _scalar(name, value)
    return FlatAttributes(attributes, dropped)


# --- envelope -> delivery ----------------------------------------------------------------------


def identify_traits(data: Mapping[str, Any], from_snapshots: bool) -> Mapping[str, Any] | None:
    """What becomes the person's attributes.

    The achievements service publishes `{"user_snapshot": {...}, "loyalty": {...}}` on the
    snapshots topic: only `user_snapshot` (seed 000's blocks) becomes attributes. `loyalty` is that
    service's bookkeeping (state version, one date per achievement, rule progress): the figures a
    campaign segments on are already in the user_snapshot, and one attribute per achievement would
    eat into the 300-attribute budget. An identify from a client carries its traits as `data`.
    """
    snapshot = data.get("user_snapshot")
    if isinstance(snapshot, Mapping):
        return snapshot
    return None if from_snapshots else data


def _unix(timestamp: datetime) -> int:
    return int(timestamp.timestamp())


def map_envelope(
    envelope: Mapping[str, Any], privacy: PrivacySettings, from_snapshots: bool = False
) -> MappingResult:
    """The Customer.io operation for one envelope (DESIGN.md, "The envelope").

    `from_snapshots`: the message came from the snapshots topic and becomes an identify.
    """
    event_id = str(envelope["event_id"])
    brand_id = str(envelope["brand_id"])
    identifiers = envelope.get("identifiers") or {}
    user_id, anonymous_id = identifiers.get("id"), identifiers.get("anonymous_id")
    event_type = "identify" if from_snapshots else envelope.get("type", "track")
    data = envelope.get("data") or {}
    timestamp = envelope["timestamp"]
    if isinstance(timestamp, str):
        timestamp = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = _unix(timestamp)
    person_key = f"{brand_id}:{user_id}" if user_id else f"{brand_id}:anon:{anonymous_id}"

    for identifier in (user_id, anonymous_id):
        if identifier and len(str(identifier).encode()) > MAX_PERSON_ID_BYTES:
            return Rejected("person_id_too_long", f"identifier is over {MAX_PERSON_ID_BYTES} bytes")

    if event_type == "identify":
        if not user_id:
            return Skipped("identify_without_id")
        traits = identify_traits(data, from_snapshots)
        if traits is None:
            return Rejected("snapshot_without_user_snapshot", "snapshot data lacks its user_snapshot")
        flat = flatten_attributes(apply_privacy(traits, privacy))
        identify_item: dict[str, Any] = {
            "type": "person", "identifiers": {"id": user_id}, "action": "identify",
            "attributes": flat.attributes, "timestamp": seconds, "id": event_id,
        }
        call = V1Call("PUT", f"/api/v1/customers/{user_id}", dict(flat.attributes))
        return Delivery(event_id, brand_id, person_key, "identify", identify_item, call, flat.dropped)

    if event_type in ("page", "screen"):
        name = envelope.get("name") or data.get("url") or data.get("name") or event_type
        action = event_type
    else:
        name = envelope.get("name")
        action = "event"
        if not name:
            return Rejected("missing_event_name", "a track event needs a name")
    name = str(name)
    if len(name.encode()) > MAX_EVENT_NAME_BYTES:
        return Rejected("event_name_too_long", f"event name is over {MAX_EVENT_NAME_BYTES} bytes")
    if any(_EMAIL.match(part) for part in re.split(r"[\s/?&=]", name)):
        return Rejected("pii_in_event_name", "an event name must not carry an e-mail address")

    payload = apply_privacy(data, privacy)
    if len(orjson.dumps(payload)) > MAX_EVENT_DATA_BYTES:
        return Rejected("event_data_too_large", f"event data is over {MAX_EVENT_DATA_BYTES} bytes")

    v2_item: dict[str, Any] = {"type": "person", "action": action, "name": name, "attributes": payload,
                               "timestamp": seconds, "id": event_id}
    v1_body: dict[str, Any] = {"name": name, "data": payload, "timestamp": seconds, "id": event_id}
    if action != "event":
        v1_body["type"] = action
    if user_id:
        v2_item["identifiers"] = {"id": user_id}
        call = V1Call("POST", f"/api/v1/customers/{user_id}/events", v1_body)
    else:
        v2_item["anonymous_id"] = anonymous_id
        call = V1Call("POST", "/api/v1/events", {**v1_body, "anonymous_id": anonymous_id})
    return Delivery(event_id, brand_id, person_key, action, v2_item, call)


def item_bytes(delivery: Delivery) -> bytes:
    return orjson.dumps(delivery.v2_item)

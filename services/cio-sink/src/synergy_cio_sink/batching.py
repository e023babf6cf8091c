"""Packing v2 batch items into requests within Customer.io's limits. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

MAX_REQUEST_BYTES = 500 * 1024
MAX_ITEM_BYTES = 32 * 1024
MAX_ITEMS = 500
_ENVELOPE_OVERHEAD = len(b'{"batch":[]}')

T = TypeVar("T")


@dataclass
class Packed(Generic[T]):
    batches: list[list[tuple[T, bytes]]] = field(default_factory=list)
    oversize: list[T] = field(default_factory=list)


def pack_batches(
    items: Sequence[tuple[T, bytes]],
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_item_bytes: int = MAX_ITEM_BYTES,
    max_items: int = MAX_ITEMS,
) -> Packed[T]:
    """Split (item, serialised item) pairs into batches, keeping their order.

    Items over `max_item_bytes` can never be accepted and come back in `oversize`.
    """
    packed: Packed[T] = Packed()
    current: list[tuple[T, bytes]] = []
    size = _ENVELOPE_OVERHEAD
    for item, body in items:
        if len(body) > max_item_bytes:
            packed.oversize.append(item)
            continue
        added = len(body) + (1 if current else 0)
        if current and (size + added > max_request_bytes or len(current) >= max_items):
            packed.batches.append(current)
            current, size, added = [], _ENVELOPE_OVERHEAD, len(body)
        current.append((item, body))
        size += added
    if current:
        packed.batches.append(current)
    return packed


def batch_body(batch: Sequence[tuple[object, bytes]]) -> bytes:
    return b'{"batch":[' + b",".join(body for _, body in batch) + b"]}"

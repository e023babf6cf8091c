"""The partition key of every user-scoped message: `brand:user` or `brand:anon:<id>`."""

from __future__ import annotations


def partition_key(brand_id: str, user_id: str | None = None, anonymous_id: str | None = None) -> str:
    if user_id:
        return f"{brand_id}:{user_id}"
    if anonymous_id:
        return f"{brand_id}:anon:{anonymous_id}"
    raise ValueError("a partition key needs a user id or an anonymous id")


def split_partition_key(key: str) -> tuple[str, str | None, str | None]:
    """Inverse of partition_key: (brand_id, user_id, anonymous_id)."""
    brand_id, _, rest = key.partition(":")
    if rest.startswith("anon:"):
        return brand_id, None, rest[len("anon:") :]
    return brand_id, rest, None

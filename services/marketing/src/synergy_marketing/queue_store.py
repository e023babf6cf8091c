"""The marketing queue in Postgres: engagement marks shared by the tracking routes and the insights
consumer, the user's queue for the read API, and the per-brand KPIs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import asyncpg

from synergy_marketing import metrics

Engagement = Literal["opened", "clicked"]

_MARK = {
    # A click implies the mail was opened (images may be blocked): both are marked, first time wins.
    "opened": """
        UPDATE marketing_queue SET opened = TRUE, opened_at = COALESCE(opened_at, $3)
        WHERE ($1::bigint IS NULL OR brand_id = $1) AND {match} AND status <> 'suppressed'
        RETURNING queue_id, brand_id, trigger_type, event_name, opened_at = $3 AS first
    """,
    "clicked": """
        UPDATE marketing_queue SET clicked = TRUE, clicked_at = COALESCE(clicked_at, $3),
               opened = TRUE, opened_at = COALESCE(opened_at, $3)
        WHERE ($1::bigint IS NULL OR brand_id = $1) AND {match} AND status <> 'suppressed'
        RETURNING queue_id, brand_id, trigger_type, event_name, clicked_at = $3 AS first
    """,
}


async def mark_engagement(
    db: asyncpg.Pool | asyncpg.Connection,
    brand_id: int | str | None,
    engagement: Engagement,
    at: datetime,
    *,
    queue_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any] | None:
    """Marks a sent queue item opened or clicked (at its first time only), found by its queue_id
    (tracking routes) or by the id of the trigger event it was sent as (Customer.io's
    `trigger_event_id`). brand_id None matches any brand (queue ids are unique; the tracking routes
    carry no brand key). Answers the item's queue_id, brand_id, trigger_type and whether this was the
    first mark, or None when no sent item matches (an unknown id, or a suppressed item)."""
    if (queue_id is None) == (event_id is None):
        raise ValueError("give exactly one of queue_id or event_id")
    match = "queue_id = $2" if queue_id is not None else "event_id = $2"
    row = await db.fetchrow(
        _MARK[engagement].format(match=match),
        None if brand_id is None else int(brand_id),
        queue_id or event_id,
        at,
    )
    if row is None:
        return None
    if row["first"]:
        metrics.QUEUE_ENGAGEMENT.labels(str(row["brand_id"]), row["event_name"], engagement).inc()
    return {
        "queue_id": row["queue_id"],
        "brand_id": str(row["brand_id"]),
        "trigger_type": row["trigger_type"],
        "first": bool(row["first"]),
    }


async def sent_item_carries_url(db: asyncpg.Pool | asyncpg.Connection, queue_id: str, url: str) -> bool:
    """Whether the queue item exists and its message carried `url` anywhere in its data (the
    click-tracking redirect goes only to such a URL)."""
    data = await db.fetchval(
        "SELECT message_data FROM marketing_queue WHERE queue_id = $1",
        queue_id,
    )
    if data is None:
        return False
    return _carries(data, url)


def _carries(value: Any, url: str) -> bool:
    if isinstance(value, str):
        return value == url
    if isinstance(value, dict):
        return any(_carries(item, url) for item in value.values())
    if isinstance(value, list):
        return any(_carries(item, url) for item in value)
    return False

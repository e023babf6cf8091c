"""The marketing queue's read API (brand key): a user's queue, and seed 004's KPIs per trigger."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse
from synergy_common.http import ProblemError, authenticate_brand

from synergy_marketing.context import MarketingContext, marketing_context
from synergy_marketing.decisions import TRIGGER_TYPES, jsonable

router = APIRouter(tags=["marketing"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or unknown brand key (problem+json)"},
    404: {"description": "no such user in this brand (problem+json)"},
    422: {"description": "invalid parameter (problem+json)"},
    503: {"description": "Postgres unavailable (problem+json)"},
}

USER_KNOWN = """
SELECT EXISTS (SELECT 1 FROM marketing_queue WHERE brand_id = $1 AND user_id = $2)
    OR EXISTS (SELECT 1 FROM carts WHERE brand_id = $1 AND person = $2)
    OR EXISTS (SELECT 1 FROM product_views WHERE brand_id = $1 AND person = $2)
    OR EXISTS (SELECT 1 FROM watch_list WHERE brand_id = $1 AND user_id = $2)
    OR EXISTS (SELECT 1 FROM email_preferences WHERE brand_id = $1 AND user_id = $2)
    OR EXISTS (SELECT 1 FROM users WHERE brand_id = $1 AND external_id = $2)
"""

USER_QUEUE = """
SELECT queue_id, trigger_type, event_name, event_id, status, reason, trigger_data, discount_code,
       discount_amount, email_subject, email_template, scheduled_send_time, sent_at, created_at, opened_at,
       clicked_at, converted_at, conversion_order_id, conversion_revenue
FROM marketing_queue WHERE brand_id = $1 AND user_id = $2
ORDER BY created_at DESC, scheduled_send_time DESC, queue_id DESC LIMIT $3
"""

SUMMARY = """
SELECT event_name,
       count(*) FILTER (WHERE sent) AS sent,
       count(*) FILTER (WHERE status = 'suppressed') AS suppressed,
       count(*) FILTER (WHERE sent AND opened) AS opened,
       count(*) FILTER (WHERE sent AND clicked) AS clicked,
       count(*) FILTER (WHERE converted) AS converted,
       COALESCE(sum(conversion_revenue) FILTER (WHERE converted), 0) AS recovered_revenue
FROM marketing_queue
WHERE brand_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
GROUP BY event_name
"""

DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def _unavailable(exc: BaseException) -> ProblemError:
    return ProblemError(503, "Postgres unavailable", repr(exc), headers={"Retry-After": "5"})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _item(row: asyncpg.Record) -> dict[str, Any]:
    item: dict[str, Any] = {
        "queue_id": row["queue_id"],
        "trigger_type": row["trigger_type"],
        "event_name": row["event_name"],
        "event_id": row["event_id"].strip(),
        "status": row["status"],
        "trigger_data": row["trigger_data"],
        "discount_code": row["discount_code"],
        "discount_amount": row["discount_amount"],
        "email_subject": row["email_subject"],
        "email_template": row["email_template"],
        "scheduled_send_time": _iso(row["scheduled_send_time"]),
        "sent": row["sent_at"] is not None,
        "sent_at": _iso(row["sent_at"]),
        "created_at": _iso(row["created_at"]),
        "opened_at": _iso(row["opened_at"]),
        "clicked_at": _iso(row["clicked_at"]),
        "converted_at": _iso(row["converted_at"]),
        "conversion_order_id": row["conversion_order_id"],
    }
    if row["status"] == "suppressed":
        item["reason"] = row["reason"]
    if row["conversion_revenue"] is not None:
        item["conversion_revenue"] = jsonable(row["conversion_revenue"])
    return item


@router.get("/v1/users/{user_id}/marketing", responses=ERRORS)
async def user_marketing(
    user_id: str = Path(min_length=1, max_length=150),
    limit: int = Query(default=100, ge=1, le=1000),
    authorization: str | None = Header(default=None),
    context: MarketingContext = Depends(marketing_context),
) -> JSONResponse:
    """The user's marketing queue, newest first: sent, suppressed (with the reason) and converted items."""
    brand_id = int(await authenticate_brand(context.authenticator, authorization))
    try:
        async with context.pool.acquire() as conn:
            known = await conn.fetchval(USER_KNOWN, brand_id, user_id)
            rows = await conn.fetch(USER_QUEUE, brand_id, user_id, limit) if known else []
    except DATABASE_ERRORS as exc:
        raise _unavailable(exc) from exc
    if not known:
        raise ProblemError(404, "Unknown user", f"no user {user_id!r} in this brand", field="user_id")
    return JSONResponse({"user_id": user_id, "items": [_item(row) for row in rows]})


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


@router.get("/v1/marketing/summary", responses=ERRORS)
async def marketing_summary(
    since: datetime | None = Query(default=None, description="only items created since (ISO 8601)"),
    authorization: str | None = Header(default=None),
    context: MarketingContext = Depends(marketing_context),
) -> JSONResponse:
    """Seed 004's KPIs per trigger: sent, open, click and conversion rates, recovered revenue."""
    brand_id = int(await authenticate_brand(context.authenticator, authorization))
    if since is not None and since.tzinfo is None:
        raise ProblemError(422, "Validation failed", "since: needs a time zone", field="since")
    try:
        rows = await context.pool.fetch(SUMMARY, brand_id, since)
    except DATABASE_ERRORS as exc:
        raise _unavailable(exc) from exc
    by_trigger = {row["event_name"]: row for row in rows}
    triggers = []
    for trigger, trigger_type in TRIGGER_TYPES.items():
        row = by_trigger.get(trigger)
        sent = int(row["sent"]) if row else 0
        opened = int(row["opened"]) if row else 0
        clicked = int(row["clicked"]) if row else 0
        converted = int(row["converted"]) if row else 0
        revenue = row["recovered_revenue"] if row else Decimal(0)
        triggers.append(
            {
                "trigger": trigger,
                "trigger_type": trigger_type,
                "sent": sent,
                "suppressed": int(row["suppressed"]) if row else 0,
                "opened": opened,
                "clicked": clicked,
                "converted": converted,
                "open_rate": _rate(opened, sent),
                "click_rate": _rate(clicked, sent),
                "conversion_rate": _rate(converted, sent),
                "recovered_revenue": jsonable(revenue),
            }
        )
    return JSONResponse({"brand_id": str(brand_id), "triggers": triggers})

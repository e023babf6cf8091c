"""HTTP on port 8004: GET /v1/users/{user_id}/loyalty, plus /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from fastapi import FastAPI, Header
from synergy_common.http import (
    ProblemError,
    WriteKeyAuthenticator,
    authenticate_brand,
    install_problem_handlers,
    ops_router,
)

from synergy_achievements import metrics
from synergy_achievements.persistence import read_loyalty
from synergy_achievements.rules import BrandRules


def loyalty_view(record: dict[str, Any], rules: BrandRules) -> dict[str, Any]:
    """The answer: points, rank (and the next one), unlocked achievements, progress toward locked ones."""
    user = record["user"]
    loyalty = user["loyalty"] or {}
    progress = loyalty.get("progress") or {}
    ladder = rules.ladder
    rank = ladder.by_key(user["current_rank_key"]) or ladder.rank_for(user["lifetime_points"])
    higher = [r for r in ladder.ranks if r.points_required > user["lifetime_points"]]
    unlocked_keys = {row["achievement_key"] for row in record["unlocked"]}
    unlocked = [
        {
            "achievement_id": row["achievement_key"],
            "name": row["name"],
            "description": row["description"],
            "points_rewarded": row["points_rewarded"],
            "badge_id": (row["rewards"] or {}).get("badge"),
            "rarity": (row["metadata"] or {}).get("rarity"),
            "category": (row["metadata"] or {}).get("category"),
            "unlocked_at": row["completed_at"].isoformat().replace("+00:00", "Z"),
        }
        for row in record["unlocked"]
    ]
    locked = [
        {
            "achievement_id": rule.key,
            "name": rule.name,
            "description": rule.description,
            "points_reward": rule.points,
            "badge_id": rule.badge,
            "rarity": rule.rarity,
            "category": rule.category,
            "progress": progress.get(rule.key)
            or {"current": 0, "target": rule.criteria.value, "percent": 0.0},
        }
        for rule in rules.achievements
        if rule.key not in unlocked_keys and rule.show_progress
    ]
    return {
        "points": {
            "balance": user["points_balance"],
            "lifetime": user["lifetime_points"],
            "spent": user["points_spent_total"],
        },
        "rank": {
            "key": rank.key,
            "name": rank.name,
            "multiplier": rank.point_multiplier,
            "next_rank_key": higher[0].key if higher else None,
            "points_to_next_rank": higher[0].points_required - user["lifetime_points"] if higher else None,
        },
        "achievements": {"unlocked": unlocked, "locked": locked},
        "engagement": (user["user_snapshot"] or {}).get("engagement", {}),
        "streak": {
            "current_days": loyalty.get("current_streak_days", 0),
            "longest_days": loyalty.get("longest_streak_days", 0),
        },
    }


def create_api(
    pool: asyncpg.Pool,
    rules_for: Callable[[str], BrandRules],
    readiness: Mapping[str, Callable[[], Awaitable[bool]]],
) -> FastAPI:
    app = FastAPI(title="synergy achievements", docs_url=None, redoc_url=None)
    install_problem_handlers(app, metrics.ANSWERS)
    app.include_router(ops_router(readiness))
    authenticator = WriteKeyAuthenticator(pool, "achievements")

    @app.get("/v1/users/{user_id}/loyalty")
    async def loyalty(user_id: str, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        brand_id = await authenticate_brand(authenticator, authorization)
        record = await read_loyalty(pool, brand_id, user_id)
        if record is None:
            raise ProblemError(404, "Unknown user", f"no loyalty record for user {user_id!r} yet")
        return {"user_id": user_id, **loyalty_view(record, rules_for(brand_id))}

    return app

"""The user_snapshot of seed 000 §2.1 built from a UserState, with its engagement block. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from synergy_achievements.rules import RankLadder
from synergy_achievements.state import RECENT_WINDOW_SECONDS, UserState, count_since

DAY = 86400
PASSTHROUGH_BLOCKS = ("profile_data", "compliance_and_contact")


@dataclass(frozen=True)
class EngagementThresholds:
    """is_dormant: no session, scan or redemption for `dormant_after_days` days.
    is_power_user: at least `power_user_min_scans` scans in the last `power_user_window_days` days.
    """

    dormant_after_days: int = 30
    power_user_min_scans: int = 10
    power_user_window_days: int = 30

    def __post_init__(self) -> None:
        if self.power_user_window_days * DAY > RECENT_WINDOW_SECONDS:
            raise ValueError("power_user_window_days is longer than the scan history kept")


@lru_cache(maxsize=1 << 16)  # strftime is slow and the same few times recur in every snapshot of a user
def iso(epoch_seconds: int | float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _days_since(then: int | None, as_of: int) -> int | None:
    return None if then is None else max(0, (as_of - then) // DAY)


def engagement_block(state: UserState, as_of: int, thresholds: EngagementThresholds) -> dict[str, Any]:
    last_activity = max(
        (t for t in (state.last_time("session"), state.last_time("scan"), state.last_time("redemption"))
         if t is not None),
        default=None,
    )
    inactive_days = _days_since(last_activity, as_of)
    recent_scans = count_since(
        state.recent.get("product_scanned", []), as_of - thresholds.power_user_window_days * DAY
    )
    block: dict[str, Any] = {
        "total_scans": state.count("product_scanned"),
        "total_redemptions": state.count("reward_redeemed"),
        "total_achievements_unlocked": len(state.achievements),
        "days_since_signup": _days_since(state.signup_at or state.first_seen, as_of),
        "days_since_last_session": _days_since(state.last_time("session"), as_of),
        "days_since_last_scan": _days_since(state.last_time("scan"), as_of),
        "days_since_last_redemption": _days_since(state.last_time("redemption"), as_of),
        "is_dormant": inactive_days is not None and inactive_days >= thresholds.dormant_after_days,
        "is_power_user": recent_scans >= thresholds.power_user_min_scans,
    }
    return {key: value for key, value in block.items() if value is not None}


DERIVED_FIELDS = (
    "days_since_signup", "days_since_last_session", "days_since_last_scan", "days_since_last_redemption",
    "is_dormant", "is_power_user",
)


def derived_fields(engagement: dict[str, Any]) -> dict[str, Any]:
    """The fields that change with the passing of time alone."""
    return {name: engagement[name] for name in DERIVED_FIELDS if name in engagement}


def user_snapshot(
    state: UserState, ladder: RankLadder, as_of: int, thresholds: EngagementThresholds
) -> dict[str, Any]:
    profile = state.profile
    identity = dict(profile.get("identity") or {})
    identity.setdefault("user_id", state.user_id)
    signup = state.signup_at or state.first_seen
    if signup is not None:
        identity.setdefault("created_at", iso(signup))
    rank = ladder.by_key(state.rank_key) or ladder.rank_for(state.lifetime_points)
    snapshot: dict[str, Any] = {
        "identity": identity,
        "economy": {
            "points_balance": state.points_balance,
            "lifetime_points": state.lifetime_points,
            "points_spent_total": state.points_spent,
            "currency_name": profile.get("currency_name") or "Points",
        },
        "status": {
            "rank_key": rank.key,
            "rank_name": rank.name,
            "rank_multiplier": rank.point_multiplier,
            "status_name": profile.get("status_name") or "Status",
        },
        "engagement": engagement_block(state, as_of, thresholds),
    }
    for block in PASSTHROUGH_BLOCKS:
        if profile.get(block):
            snapshot[block] = profile[block]
    referral = dict(profile.get("referral_data") or {})
    referral["total_referrals_completed"] = state.referrals_completed
    snapshot["referral_data"] = referral
    return snapshot

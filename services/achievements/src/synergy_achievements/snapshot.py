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
    """The engagement block; a field whose time is unknown is left out. Built in one pass, as it is built
    for every snapshot."""
    first_last = state.first_last
    session = first_last.get("session")
    scan = first_last.get("scan")
    redemption = first_last.get("redemption")
    last_session = session[1] if session else None
    last_scan = scan[1] if scan else None
    last_redemption = redemption[1] if redemption else None
    counts = state.counts
    block: dict[str, Any] = {
        "total_scans": counts.get("product_scanned", 0),
        "total_redemptions": counts.get("reward_redeemed", 0),
        "total_achievements_unlocked": len(state.achievements),
    }
    signup = state.signup_at or state.first_seen
    if signup is not None:
        block["days_since_signup"] = max(0, (as_of - signup) // DAY)
    last_activity = None
    if last_session is not None:
        block["days_since_last_session"] = max(0, (as_of - last_session) // DAY)
        last_activity = last_session
    if last_scan is not None:
        block["days_since_last_scan"] = max(0, (as_of - last_scan) // DAY)
        if last_activity is None or last_scan > last_activity:
            last_activity = last_scan
    if last_redemption is not None:
        block["days_since_last_redemption"] = max(0, (as_of - last_redemption) // DAY)
        if last_activity is None or last_redemption > last_activity:
            last_activity = last_redemption
    block["is_dormant"] = (
        last_activity is not None and max(0, (as_of - last_activity) // DAY) >= thresholds.dormant_after_days
    )
    scans = state.recent.get("product_scanned")
    recent_scans = count_since(scans, as_of - thresholds.power_user_window_days * DAY) if scans else 0
    block["is_power_user"] = recent_scans >= thresholds.power_user_min_scans
    return block


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

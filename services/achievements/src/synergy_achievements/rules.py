"""Brand rules: the rank ladder and the achievement configs (seed 003 §2.2, §3.1). Pure data, no I/O.

Configs come from Postgres rows (`achievement_configs`, `ranks`); global rows (brand_id NULL) apply to
every brand unless the brand has a row with the same achievement_key.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property, lru_cache
from typing import Any

from synergy_common.durations import parse_duration

from synergy_achievements.state import UserState, max_in_window


@dataclass(frozen=True, slots=True)
class Rank:
    key: str
    name: str
    points_required: int
    point_multiplier: float


DEFAULT_LADDER: tuple[Rank, ...] = (
    Rank("bronze", "Bronze", 0, 1.0),
    Rank("silver", "Silver", 1_000, 1.25),
    Rank("gold", "Gold", 5_000, 2.0),
    Rank("platinum", "Platinum", 15_000, 2.5),
)


@dataclass(frozen=True)
class RankLadder:
    ranks: tuple[Rank, ...] = DEFAULT_LADDER

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.ranks, key=lambda rank: rank.points_required))
        if not ordered or ordered[0].points_required > 0:
            # Someone with 0 lifetime points must hold a rank; keep the ladder's lowest as the floor.
            floor = ordered[0] if ordered else DEFAULT_LADDER[0]
            ordered = (Rank(floor.key, floor.name, 0, floor.point_multiplier), *ordered[1:])
        object.__setattr__(self, "ranks", ordered)

    def rank_for(self, lifetime_points: int) -> Rank:
        current = self.ranks[0]
        for rank in self.ranks:
            if rank.points_required <= lifetime_points:
                current = rank
        return current

    def by_key(self, key: str | None) -> Rank | None:
        return self._ranks_by_key.get(key) if key is not None else None

    @cached_property
    def _ranks_by_key(self) -> dict[str, Rank]:
        return {rank.key: rank for rank in self.ranks}


OPERATORS: dict[str, str] = {
    ">=": ">=", "gte": ">=", ">": ">", "gt": ">", "==": "==", "=": "==", "eq": "==",
    "<=": "<=", "lte": "<=", "<": "<", "lt": "<",
}


COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, ">": operator.gt, "==": operator.eq, "<=": operator.le, "<": operator.lt,
}


def compare(value: float, operator_name: str, target: float) -> bool:
    return COMPARISONS[OPERATORS[operator_name]](value, target)


# Metrics an achievement's criteria may name. `event_count:<event name>` counts any event.
METRICS = frozenset({
    "scan_count", "redemption_count", "session_count", "referral_count", "referrals_initiated",
    "wishlist_items", "achievements_unlocked", "scan_streak_days", "lifetime_points", "purchase_amount",
})
EVENTS_OF_METRIC: dict[str, str] = {
    "scan_count": "product_scanned",
    "redemption_count": "reward_redeemed",
    "session_count": "user_session_started",
    "referrals_initiated": "referral_initiated",
}


@lru_cache(maxsize=1024)
def counted_event(metric: str) -> str | None:
    """The event whose occurrences a metric counts, when it counts one (timeframes need that)."""
    if metric.startswith("event_count:"):
        return metric.partition(":")[2]
    return EVENTS_OF_METRIC.get(metric)


# The UserState attribute a metric reads, for metrics that are one attribute.
METRIC_ATTRIBUTES: dict[str, str] = {
    "referral_count": "referrals_completed",
    "wishlist_items": "wishlist_size",
    "scan_streak_days": "longest_streak",
    "lifetime_points": "lifetime_points",
    "purchase_amount": "purchase_total",
}


@dataclass(frozen=True, slots=True)
class Criteria:
    metric: str
    operator: str
    value: float
    timeframe: timedelta | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Criteria:
        metric = str(raw["metric"])
        if metric not in METRICS and counted_event(metric) is None:
            raise ValueError(f"unknown metric {metric!r}")
        operator = str(raw.get("operator", ">="))
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r}")
        timeframe_text = raw.get("timeframe")
        timeframe = parse_duration(str(timeframe_text)) if timeframe_text else None
        if timeframe is not None and counted_event(metric) is None:
            raise ValueError(f"metric {metric!r} counts no event, so it cannot have a timeframe")
        return cls(metric, operator, float(raw["value"]), timeframe)

    @property
    def reads(self) -> str:
        """What moves this criterion's value: the event a counting metric counts (its count, or its
        recent times for a timeframe), else the metric itself."""
        return counted_event(self.metric) or self.metric

    def reader(self) -> Callable[[UserState], float]:
        """The criterion's metric as one call on a state."""
        event = counted_event(self.metric)
        if self.timeframe is not None and event is not None:
            seconds = self.timeframe.total_seconds()
            return lambda state: max_in_window(state.recent.get(event, []), seconds)
        if event is not None:
            return lambda state: state.counts.get(event, 0)
        attribute = METRIC_ATTRIBUTES.get(self.metric)
        if attribute is not None:
            return operator.attrgetter(attribute)
        if self.metric == "achievements_unlocked":
            return lambda state: len(state.achievements)
        return lambda state: 0


@dataclass(frozen=True, slots=True)
class AchievementRule:
    key: str
    name: str
    description: str
    achievement_type: str
    criteria: Criteria
    points: int = 0
    badge: str | None = None
    multiplier: float = 1.0
    category: str | None = None
    rarity: str | None = None
    config_id: int | None = None
    show_progress: bool = True

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AchievementRule:
        rewards = row.get("rewards") or {}
        metadata = row.get("metadata") or {}
        visibility = row.get("visibility") or {}
        return cls(
            key=str(row["achievement_key"]),
            name=str(row["name"]),
            description=str(row.get("description") or ""),
            achievement_type=str(row["achievement_type"]),
            criteria=Criteria.from_json(row["criteria"]),
            points=int(rewards.get("points") or 0),
            badge=rewards.get("badge"),
            multiplier=float(rewards.get("multiplier") or 1.0),
            category=metadata.get("category"),
            rarity=metadata.get("rarity"),
            config_id=row.get("id"),
            show_progress=bool(visibility.get("show_progress", True)),
        )


# Per rule, the progress dicts of this many metric values are kept and shared between snapshots (they
# are only serialised): a snapshot shows the progress of every locked rule, and most values recur.
PROGRESS_KEPT = 4096
ALWAYS_TIMED_EVENTS = frozenset({"product_scanned"})  # the power-user window needs recent scans


class CompiledRule:
    """An achievement rule as the hot path judges it: its metric one call, its operator one function."""

    __slots__ = ("_progress", "key", "read", "reads", "rule", "show_progress", "target", "test")

    def __init__(self, rule: AchievementRule) -> None:
        self.key = rule.key
        self.rule = rule
        self.reads = rule.criteria.reads
        self.read = rule.criteria.reader()
        self.test = COMPARISONS[OPERATORS[rule.criteria.operator]]
        self.target = rule.criteria.value
        self.show_progress = rule.show_progress
        self._progress: dict[int, dict[str, Any]] = {}  # by the metric's (integer) value; read-only dicts

    def met(self, state: UserState) -> bool:
        return self.test(self.read(state), self.target)

    def progress(self, state: UserState) -> dict[str, Any]:
        """The progress of a rule the state has not unlocked yet."""
        current = self.read(state)
        # 3 and 3.0 print apart: only integer values are looked up and kept
        exact = current if type(current) is int else None
        progress = self._progress.get(exact) if exact is not None else None
        if progress is None:
            target = self.target
            ratio = min(1.0, current / target) if target > 0 else 0.0
            progress = {"current": current, "target": target, "percent": round(ratio * 100, 1)}
            if exact is not None and len(self._progress) < PROGRESS_KEPT:
                self._progress[exact] = progress
        return progress


class RuleBook:
    """A brand's rules compiled once: every rule, and per set of things an event moves (see
    `Criteria.reads`) the rules that read one of them, in the brand's order. Only those can change
    from unmet to met through that event."""

    def __init__(self, achievements: tuple[AchievementRule, ...]) -> None:
        self.rules = tuple(CompiledRule(rule) for rule in achievements)
        self.shown = tuple(rule for rule in self.rules if rule.show_progress)
        self._reading: dict[frozenset[str], tuple[CompiledRule, ...]] = {}
        criteria = [
            (rule.key, rule.criteria.metric, OPERATORS[rule.criteria.operator], rule.criteria.value,
             rule.criteria.timeframe.total_seconds() if rule.criteria.timeframe is not None else None)
            for rule in achievements
        ]
        # What decides whether a rule is met, as a stable text (str hashes differ between processes).
        self.fingerprint = hashlib.blake2b(repr(criteria).encode(), digest_size=8).hexdigest()

    def reading(self, moved: frozenset[str]) -> tuple[CompiledRule, ...]:
        rules = self._reading.get(moved)
        if rules is None:
            rules = self._reading[moved] = tuple(rule for rule in self.rules if rule.reads in moved)
        return rules


@dataclass(frozen=True)
class BrandRules:
    achievements: tuple[AchievementRule, ...]
    ladder: RankLadder = field(default_factory=RankLadder)

    def timeframed_events(self) -> frozenset[str]:
        return frozenset(
            event
            for rule in self.achievements
            if rule.criteria.timeframe is not None and (event := counted_event(rule.criteria.metric))
        )

    @cached_property
    def timed_events(self) -> frozenset[str]:
        """The events whose recent times the state keeps: those timeframes count, and scans."""
        return self.timeframed_events() | ALWAYS_TIMED_EVENTS

    def by_key(self, key: str) -> AchievementRule | None:
        return next((rule for rule in self.achievements if rule.key == key), None)

    @cached_property
    def book(self) -> RuleBook:
        return RuleBook(self.achievements)


def _default(
    key: str, name: str, description: str, achievement_type: str, criteria: dict[str, Any],
    points: int, badge: str, category: str, rarity: str,
) -> dict[str, Any]:
    return {
        "achievement_key": key, "name": name, "description": description,
        "achievement_type": achievement_type, "criteria": {"operator": ">=", "timeframe": None, **criteria},
        "rewards": {"points": points, "badge": badge, "multiplier": 1.0},
        "metadata": {"category": category, "rarity": rarity},
        "visibility": {"active": True, "show_progress": True},
    }


# The defaults the 0002 migration seeds as global rows; also used when Postgres is unreachable at start.
DEFAULT_ACHIEVEMENT_ROWS: tuple[dict[str, Any], ...] = (
    _default("first_scan", "First Scan", "Complete your first product scan", "scan_count",
             {"metric": "scan_count", "value": 1}, 100, "first-scan-badge", "milestone", "common"),
    _default("scans_10", "Regular Scanner", "Scan 10 products", "scan_count",
             {"metric": "scan_count", "value": 10}, 250, "scans-10-badge", "milestone", "uncommon"),
    _default("scans_50", "Scan Master", "Scan 50 products", "scan_count",
             {"metric": "scan_count", "value": 50}, 1000, "scans-50-badge", "milestone", "rare"),
    _default("scan_sprint", "Scan Sprint", "Scan 5 products within 7 days", "scan_count",
             {"metric": "scan_count", "value": 5, "timeframe": "7d"}, 300, "scan-sprint-badge",
             "engagement", "uncommon"),
    _default("first_referral", "First Referral", "Refer a friend who completes their first scan",
             "referral_count", {"metric": "referral_count", "value": 1}, 200, "first-referral-badge",
             "social", "common"),
    _default("wishlist_5", "Wish Maker", "Have 5 products on your wishlist", "wishlist_items",
             {"metric": "wishlist_items", "value": 5}, 50, "wishlist-5-badge", "engagement", "common"),
    _default("first_redemption", "First Reward", "Redeem your first reward", "custom",
             {"metric": "redemption_count", "value": 1}, 100, "first-redemption-badge", "milestone",
             "common"),
    _default("scan_streak_7", "7-Day Streak", "Scan on 7 days in a row", "custom",
             {"metric": "scan_streak_days", "value": 7}, 500, "streak-7-badge", "engagement", "rare"),
    _default("achievement_hunter", "Achievement Hunter", "Unlock 5 achievements", "achievement_unlocked",
             {"metric": "achievements_unlocked", "value": 5}, 500, "hunter-badge", "meta", "epic"),
)


def default_rules() -> BrandRules:
    return BrandRules(tuple(AchievementRule.from_row(row) for row in DEFAULT_ACHIEVEMENT_ROWS))


class RuleCatalog:
    """Every brand's rules, rebuilt from config rows. Brand rows override global rows by key."""

    def __init__(self, config_rows: Iterable[Mapping[str, Any]] = (),
                 rank_rows: Iterable[Mapping[str, Any]] = (), use_defaults: bool = True) -> None:
        self._global: dict[str, AchievementRule] = {}
        self._by_brand: dict[str, dict[str, AchievementRule]] = {}
        self._inactive: dict[str, set[str]] = {}
        self._ladders: dict[str, RankLadder] = {}
        self._cache: dict[str, BrandRules] = {}
        self.errors: list[str] = []
        rows = list(config_rows)
        if not rows and use_defaults:
            rows = list(DEFAULT_ACHIEVEMENT_ROWS)
        for row in rows:
            brand = row.get("brand_id")
            key = str(row["achievement_key"])
            if row.get("is_active") is False:
                if brand is not None:
                    self._inactive.setdefault(str(brand), set()).add(key)
                continue
            try:
                rule = AchievementRule.from_row(row)
            except (KeyError, ValueError, TypeError) as exc:
                self.errors.append(f"achievement {key!r}: {exc}")
                continue
            if brand is None:
                self._global[key] = rule
            else:
                self._by_brand.setdefault(str(brand), {})[key] = rule
        ranks_by_brand: dict[str, list[Rank]] = {}
        for row in rank_rows:
            if row.get("is_active") is False:
                continue
            ranks_by_brand.setdefault(str(row["brand_id"]), []).append(
                Rank(str(row["key"]), str(row["name"]), int(row["points_required"]),
                     float(row["point_multiplier"]))
            )
        self._ladders = {brand: RankLadder(tuple(ranks)) for brand, ranks in ranks_by_brand.items()}

    def __getstate__(self) -> dict[str, Any]:
        """For the batch body's child processes: without the brands' rules built from the rows (their
        criteria's compiled readers do not pickle); the child builds them again on first use."""
        return {**self.__dict__, "_cache": {}}

    def for_brand(self, brand_id: str) -> BrandRules:
        cached = self._cache.get(brand_id)
        if cached is None:
            inactive = self._inactive.get(brand_id, set())
            merged = {key: rule for key, rule in self._global.items() if key not in inactive}
            merged.update(self._by_brand.get(brand_id, {}))
            cached = BrandRules(tuple(merged.values()), self._ladders.get(brand_id, RankLadder()))
            self._cache[brand_id] = cached
        return cached

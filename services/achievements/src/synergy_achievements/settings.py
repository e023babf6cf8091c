"""Achievements configuration from the environment (see the service README)."""

from __future__ import annotations

import os
from functools import cached_property

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict
from synergy_common.durations import parse_duration
from synergy_common.settings import CommonSettings

from synergy_achievements.snapshot import EngagementThresholds
from synergy_achievements.state import APPLIED_IDS_KEPT

REFERRAL_AWARDS_TOPIC_ENV = "SYNERGY_TOPIC_REFERRAL_AWARDS"
MAX_APPLIED_IDS_KEPT = 30_000  # 16 bytes of JSON per id (its digest in base64): ~480 KB, under a 1 MB record


def referral_awards_topic() -> str:
    return os.environ.get(REFERRAL_AWARDS_TOPIC_ENV, "synergy.achievements.referral-awards.v1")


class AchievementsSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    achievements_http_port: int = 8004
    achievements_http_host: str = "0.0.0.0"
    achievements_app_id: str = "synergy-achievements"
    achievements_store: str = "rocksdb://"  # memory:// keeps state only in the changelog
    achievements_data_dir: str = ".local/achievements"
    achievements_dormant_after: str = "30d"
    achievements_power_user_min_scans: int = 10
    achievements_power_user_window: str = "30d"
    achievements_recompute_interval: str = "24h"
    achievements_rules_poll_interval: str = "30s"
    achievements_rules_wait: str = "15s"  # at start, longest wait for the rules before applying events
    achievements_standby_replicas: int = 0
    achievements_session_timeout: str = "60s"  # how soon a dead worker's partitions move
    # Events applied as one step (one state write per user per batch). Each batch pays a transaction per
    # partition; at 2000 the worker did ~13% more events/s on the bench than at 1000 (README, issue 15
    # point 8, eighth round), and the dedupe window this implies (10 batches, 20,000 ids) stays well under
    # MAX_APPLIED_IDS_KEPT.
    achievements_batch_size: int = 2000
    # Longest wait for a batch to fill. At 0.05 s faust delivered 150-450 events per batch on the shared
    # bench machine, and the per-batch costs (a transaction per partition) weighed on every event; at
    # 0.2 s batches fill to ~900-1000 and the worker does ~14% more events per CPU-second (README).
    achievements_batch_wait_seconds: float = 0.2
    achievements_max_poll_records: int = 500
    # How long the broker may hold a fetch that finds no new records (faust hard-codes 1500 ms): see
    # faust_pipeline.faust_consumer_reads_committed_and_fetches_briskly.
    achievements_fetch_max_wait: str = "50ms"
    # Events faust buffers per stream before it stops fetching the partition (faust's
    # stream_buffer_maxsize, default 4096). With 4096 the stream ran dry for 400-850 ms every 4-5 batches:
    # faust took the partition out of the fetch when the buffer was nearly full and the fetch resumed
    # only after it had drained to half (README, issue 15 point 8, sixth round).
    achievements_stream_buffer_maxsize: int = 32768
    achievements_shutdown_timeout: str = "15s"  # SIGTERM: longest wait for a clean stop, then exit anyway
    # Child processes that apply the batches, each its share of the partitions, while faust fetches and
    # the previous batch commits in the worker's own (services/achievements/README.md); 0: each batch is
    # applied on the worker's event loop.
    achievements_apply_processes: int = Field(default=2, ge=0, le=64)
    achievements_persist: bool = True  # write users' points and user_achievements to Postgres
    # Per user, how many applied event ids the state keeps to recognise a replay; at least 10 batches.
    achievements_applied_ids_kept: int | None = None

    @model_validator(mode="after")
    def _dedupe_window_covers_ten_batches(self) -> AchievementsSettings:
        floor = 10 * self.achievements_batch_size
        if self.achievements_applied_ids_kept is not None and self.achievements_applied_ids_kept < floor:
            raise ValueError(
                f"ACHIEVEMENTS_APPLIED_IDS_KEPT={self.achievements_applied_ids_kept} is below ten times "
                f"ACHIEVEMENTS_BATCH_SIZE ({floor}): a replayed batch could be applied twice"
            )
        if self.applied_ids_kept > MAX_APPLIED_IDS_KEPT:
            raise ValueError(
                f"a dedupe window of {self.applied_ids_kept} event ids (ACHIEVEMENTS_APPLIED_IDS_KEPT, at "
                f"least 10 x ACHIEVEMENTS_BATCH_SIZE) exceeds {MAX_APPLIED_IDS_KEPT}: a busy user's state "
                "would outgrow Kafka's 1 MB record limit on the changelog"
            )
        return self

    @property
    def applied_ids_kept(self) -> int:
        if self.achievements_applied_ids_kept is not None:
            return self.achievements_applied_ids_kept
        return max(APPLIED_IDS_KEPT, 10 * self.achievements_batch_size)

    @cached_property
    def thresholds(self) -> EngagementThresholds:
        return EngagementThresholds(
            dormant_after_days=int(parse_duration(self.achievements_dormant_after).total_seconds() // 86400),
            power_user_min_scans=self.achievements_power_user_min_scans,
            power_user_window_days=int(
                parse_duration(self.achievements_power_user_window).total_seconds() // 86400
            ),
        )

    def seconds(self, duration: str) -> float:
        return parse_duration(duration).total_seconds()


def settings_from_env() -> AchievementsSettings:
    return AchievementsSettings()

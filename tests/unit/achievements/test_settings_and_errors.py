"""Achievements settings (dedupe window, topic durability) and how Postgres failures are sorted."""

from __future__ import annotations

import asyncpg
import pytest
from pydantic import ValidationError
from synergy_achievements.persistence import is_data_rejected
from synergy_achievements.settings import AchievementsSettings
from synergy_achievements.worker import durability
from synergy_common.db_errors import is_retryable_db_error


def test_the_dedupe_window_defaults_to_ten_thousand_or_ten_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACHIEVEMENTS_APPLIED_IDS_KEPT", raising=False)
    monkeypatch.setenv("ACHIEVEMENTS_BATCH_SIZE", "1000")
    assert AchievementsSettings().applied_ids_kept == 10_000
    monkeypatch.setenv("ACHIEVEMENTS_BATCH_SIZE", "2500")
    assert AchievementsSettings().applied_ids_kept == 25_000


def test_the_batches_are_applied_in_two_child_processes_unless_set_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACHIEVEMENTS_APPLY_PROCESSES", raising=False)
    assert AchievementsSettings().achievements_apply_processes == 2
    monkeypatch.setenv("ACHIEVEMENTS_APPLY_PROCESSES", "0")
    assert AchievementsSettings().achievements_apply_processes == 0
    monkeypatch.setenv("ACHIEVEMENTS_APPLY_PROCESSES", "-1")
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        AchievementsSettings()


def test_a_dedupe_window_smaller_than_ten_batches_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACHIEVEMENTS_BATCH_SIZE", "1000")
    monkeypatch.setenv("ACHIEVEMENTS_APPLIED_IDS_KEPT", "9999")
    with pytest.raises(ValidationError, match="ten times"):
        AchievementsSettings()
    monkeypatch.setenv("ACHIEVEMENTS_APPLIED_IDS_KEPT", "10000")
    assert AchievementsSettings().applied_ids_kept == 10_000


def test_a_dedupe_window_that_would_outgrow_a_kafka_record_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACHIEVEMENTS_APPLIED_IDS_KEPT", raising=False)
    monkeypatch.setenv("ACHIEVEMENTS_BATCH_SIZE", "3000")
    assert AchievementsSettings().applied_ids_kept == 30_000
    monkeypatch.setenv("ACHIEVEMENTS_BATCH_SIZE", "3001")
    with pytest.raises(ValidationError, match="1 MB"):
        AchievementsSettings()


def test_the_workers_topics_take_their_durability_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNERGY_TOPIC_REPLICATION", raising=False)
    monkeypatch.delenv("SYNERGY_TOPIC_MIN_INSYNC", raising=False)
    assert durability() == (1, {"min.insync.replicas": "1"})
    monkeypatch.setenv("SYNERGY_TOPIC_REPLICATION", "3")
    monkeypatch.setenv("SYNERGY_TOPIC_MIN_INSYNC", "2")
    assert durability() == (3, {"min.insync.replicas": "2"})


@pytest.mark.parametrize(
    ("error", "retryable", "rejected"),
    [
        (asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence 0x00"), False, True),
        (asyncpg.exceptions.NumericValueOutOfRangeError("out of range"), False, True),
        (asyncpg.exceptions.NotNullViolationError("null"), False, True),
        (asyncpg.exceptions.SerializationError("could not serialize"), True, False),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), True, False),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), True, False),
        (asyncpg.exceptions.AdminShutdownError("shutting down"), True, False),
        (ConnectionRefusedError("refused"), True, False),
        (asyncpg.exceptions.UndefinedTableError("no table"), False, False),  # a bug: neither, so it crashes
        (RuntimeError("bug"), False, False),
    ],
)
def test_postgres_failures_are_sorted_into_retry_dead_letter_or_crash(
    error: BaseException, retryable: bool, rejected: bool
) -> None:
    assert (is_retryable_db_error(error), is_data_rejected(error)) == (retryable, rejected)


"""SYNERGY_TOPIC_REPLICATION / SYNERGY_TOPIC_MIN_INSYNC reach the topics the system creates (one broker here)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from synergy_achievements.worker import ensure_topics


async def topic_config(bootstrap: str, topic: str, name: str) -> tuple[str, bool]:
    """(value, whether it is set on the topic itself rather than inherited from the broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.resources
    entries = {entry[0]: entry for entry in resource[4]}
    # DescribeConfigs v1+ entries: (name, value, read_only, config_source, is_sensitive, synonyms);
    # config_source 1 is TOPIC_CONFIG, 5 DEFAULT_CONFIG
    return entries[name][1], entries[name][3] == 1


async def test_the_worker_asks_for_the_replication_factor_of_the_settings(
    kafka_bootstrap: str, topic_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = await topic_factory(2, prefix="durability.events")
    monkeypatch.setenv("SYNERGY_TOPIC_LOYALTY", f"durability.loyalty.{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("SYNERGY_TOPIC_REPLICATION", "2")
    with pytest.raises(RuntimeError, match="error 38"):  # INVALID_REPLICATION_FACTOR: one broker here
        await ensure_topics(kafka_bootstrap, events)


async def test_topics_the_worker_creates_carry_min_insync_replicas_from_the_settings(
    kafka_bootstrap: str, topic_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = await topic_factory(2, prefix="durability.events")
    loyalty = f"durability.loyalty.{uuid.uuid4().hex[:8]}"
    for name, value in {
        "SYNERGY_TOPIC_EVENTS": events, "SYNERGY_TOPIC_LOYALTY": loyalty,
        "SYNERGY_TOPIC_SNAPSHOTS": f"{loyalty}.snapshots", "SYNERGY_TOPIC_DLQ": f"{loyalty}.dlq",
        "SYNERGY_TOPIC_REFERRAL_AWARDS": f"{loyalty}.awards",
        "SYNERGY_TOPIC_REPLICATION": "1", "SYNERGY_TOPIC_MIN_INSYNC": "1",
    }.items():
        monkeypatch.setenv(name, value)
    created = [loyalty, f"{loyalty}.snapshots", f"{loyalty}.dlq", f"{loyalty}.awards"]
    try:
        assert await ensure_topics(kafka_bootstrap, events) == 2
        assert await topic_config(kafka_bootstrap, loyalty, "min.insync.replicas") == ("1", True)
        assert await topic_config(kafka_bootstrap, f"{loyalty}.snapshots", "cleanup.policy") == (
            "compact", True
        )
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(created)
        finally:
            await admin.close()

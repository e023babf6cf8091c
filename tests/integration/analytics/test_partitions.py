"""Month partitions: made ahead of now and on demand for an event's month, dropped a partition at a time
past the retention, and events older than the retention never logged."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from synergy_analytics import store
from synergy_analytics.service import Analytics
from synergy_analytics.settings import AnalyticsSettings
from synergy_common.db import create_pool

from tests.integration.analytics.harness import analytics_service, logged_ids, make_brand, publish, wait_for

pytestmark = pytest.mark.integration


async def partitions(db) -> list[str]:
    rows = await db.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                          "WHERE i.inhparent = 'user_action_log'::regclass ORDER BY c.relname")
    return [r["relname"] for r in rows]


async def test_partitions_ahead_on_demand_and_dropped_past_the_retention(database_factory) -> None:
    url = await database_factory("analytics_parts")
    pool = await create_pool(url, min_size=1, max_size=2)
    log_pool = await store.create_log_pool(url)
    try:
        analytics = Analytics(AnalyticsSettings(database_url=url, analytics_retention="60d",
                                                analytics_partitions_ahead=2), pool, log_pool)
        made = await analytics.partitions.ensure(pool, {datetime(2026, 6, 1, tzinfo=UTC),
                                                        datetime(2026, 9, 1, tzinfo=UTC)})
        assert made == 2
        await pool.execute("INSERT INTO user_action_log (event_id, occurred_at, brand_id, action_type) VALUES "
                           "('old', '2026-06-15T00:00:00Z', 1, 'x'), ('kept', '2026-09-30T00:00:00Z', 1, 'x')")
        # from 2026-12-01 on, 60 days back is October or later, so June and September (ending 2026-10-01) go
        await analytics.maintain()
        names = await partitions(pool)
        assert "user_action_log_2026_06" not in names and "user_action_log_2026_09" not in names
        now = datetime.now(UTC)
        months = [(now.year * 12 + now.month - 1 + k) for k in (-1, 0, 1, 2)]  # last month to two ahead
        assert {f"user_action_log_{m // 12}_{m % 12 + 1:02d}" for m in months} <= set(names)
        assert await pool.fetchval("SELECT count(*) FROM user_action_log") == 0
        assert await analytics.partitions.ensure(pool, {datetime(now.year, now.month, 1, tzinfo=UTC)}) == 0
    finally:
        await log_pool.close()
        await pool.close()


async def test_an_event_older_than_the_retention_is_skipped_and_a_new_months_partition_is_made(
    kafka_bootstrap, database_url, topic_factory, kafka_producer, db
) -> None:
    brand = await make_brand(db)
    base = {"type": "track", "name": "product_scanned", "brand_id": brand.brand_id, "identifiers": {"id": "u"},
            "data": {}, "source": "ingest"}
    events = [{**base, "event_id": f"{brand.brand_id}-ancient", "timestamp": "2019-01-01T00:00:00Z"},
              {**base, "event_id": f"{brand.brand_id}-future", "timestamp": "2027-09-09T00:00:00Z"}]
    topic = await topic_factory(1, prefix="analytics.retention")
    await publish(kafka_producer, topic, events)
    async with analytics_service(kafka_bootstrap, database_url, topic_factory, topics=[topic]):
        await wait_for(lambda: _logged(db, brand.brand_id, [f"{brand.brand_id}-future"]))
    assert "user_action_log_2027_09" in await partitions(db)
    assert "user_action_log_2019_01" not in await partitions(db)


async def _logged(db, brand_id: str, expected: list[str]) -> bool:
    return await logged_ids(db, brand_id) == expected

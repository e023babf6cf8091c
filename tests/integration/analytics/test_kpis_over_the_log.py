"""The constructed population through Kafka into the log, and the KPI routes over it; the answers are the
same hand-computed values as the pure tests'. Another brand's events, under the same user ids, never count."""

from __future__ import annotations

from datetime import timedelta

import pytest
from synergy_analytics import queries

from tests.integration.analytics.harness import analytics_service, logged_ids, make_brand, publish, wait_for
from tests.unit.analytics.population import DAY0, SINCE, STEPS, UNTIL, envelopes

pytestmark = pytest.mark.integration
RANGE = {"since": "2026-10-05T00:00:00Z", "until": "2026-10-08T00:00:00Z"}


def foreign_events(brand_id: str) -> list[dict]:
    """Brand B: its own u4 goes all the way through the funnel within an hour; it must not leak into A."""
    base = {"type": "track", "brand_id": brand_id, "identifiers": {"id": "u4"}, "data": {}, "source": "ingest"}
    return [
        {**base, "event_id": f"b-{brand_id}-1", "name": "user_session_started", "timestamp": "2026-10-07T00:00:00Z"},
        {**base, "event_id": f"b-{brand_id}-2", "name": "product_scanned", "timestamp": "2026-10-07T00:10:00Z"},
        {**base, "event_id": f"b-{brand_id}-3", "name": "order_completed", "timestamp": "2026-10-07T00:20:00Z"},
    ]


@pytest.fixture(scope="module")
async def population(kafka_bootstrap, database_url, topic_factory, kafka_producer):
    from synergy_common.db import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=4)
    brand_a, brand_b = await make_brand(pool, "Brand A"), await make_brand(pool, "Brand B")
    async with analytics_service(kafka_bootstrap, database_url, topic_factory) as (client, _running, topics):
        mine = envelopes(brand_a.brand_id)
        engine = [e for e in mine if e["source"] == "achievements"]
        await publish(kafka_producer, topics[0], [e for e in mine if e["source"] != "achievements"])
        await publish(kafka_producer, topics[1], engine)
        await publish(kafka_producer, topics[0], foreign_events(brand_b.brand_id))

        async def all_logged() -> bool:
            return len(await logged_ids(pool, brand_a.brand_id)) == 19 and len(
                await logged_ids(pool, brand_b.brand_id)) == 3

        await wait_for(all_logged)
        yield client, pool, brand_a, brand_b
    await pool.close()


async def test_the_ordered_funnel_route_answers_4_3_1_with_a_7_day_window(population) -> None:
    client, _, brand_a, _ = population
    answer = await client.get("/v1/kpis/funnel", headers=brand_a.headers,
                              params={"steps": ",".join(STEPS), "window": "7d", **RANGE})
    assert answer.status_code == 200
    assert answer.json() == {
        "steps": [
            {"name": "user_session_started", "users": 4, "conversion_from_previous": None,
             "conversion_from_first": 1.0, "median_seconds_from_previous": None},
            {"name": "product_scanned", "users": 3, "conversion_from_previous": 0.75,
             "conversion_from_first": 0.75, "median_seconds_from_previous": 7200.0},
            {"name": "order_completed", "users": 1, "conversion_from_previous": 1 / 3,
             "conversion_from_first": 0.25, "median_seconds_from_previous": 169200.0},
        ],
        "window_seconds": 604800.0,
        "order": "ordered",
    }


async def test_the_default_window_is_14_days_and_strict_order_breaks_on_the_interleaved_view(population) -> None:
    client, _, brand_a, _ = population
    default = (await client.get("/v1/kpis/funnel", headers=brand_a.headers,
                                params={"steps": ",".join(STEPS), **RANGE})).json()
    assert [s["users"] for s in default["steps"]] == [4, 3, 2]
    assert default["window_seconds"] == 1209600.0
    strict = (await client.get("/v1/kpis/funnel", headers=brand_a.headers,
                               params={"steps": ",".join(STEPS), "window": "7d", "order": "strict", **RANGE})).json()
    assert [s["users"] for s in strict["steps"]] == [4, 2, 1]
    assert [s["median_seconds_from_previous"] for s in strict["steps"]] == [None, 45000.0, 169200.0]
    assert strict["order"] == "strict"


async def test_time_to_first_and_second_scan(population) -> None:
    client, _, brand_a, _ = population
    answer = await client.get("/v1/kpis/time-to-first", headers=brand_a.headers,
                              params={"action": "product_scanned", "from": "user_session_started", **RANGE})
    assert answer.json() == {
        "action": "product_scanned", "from": "user_session_started", "cohort_users": 4, "users": 3,
        "median_seconds": 7200.0, "p75_seconds": 46800.0,
        "second_use_median_seconds": 259200.0, "second_use_p75_seconds": 734400.0,
    }


async def test_week_1_retention_and_the_daily_curve_and_activation(population) -> None:
    client, pool, brand_a, _ = population
    answer = await client.get("/v1/kpis/retention", headers=brand_a.headers,
                              params={"start": "user_session_started", "return": "product_scanned", "week": 1,
                                      **RANGE})
    assert answer.json() == {"cohort_users": 4, "retained_users": 2, "rate": 0.5}
    curve = await queries.retention_curve(pool, int(brand_a.brand_id), "user_session_started", "product_scanned",
                                          SINCE, UNTIL, days=14)
    assert [d.retained_users for d in curve] == [2, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    activation = await queries.activation(pool, int(brand_a.brand_id), "user_session_started",
                                          ["product_scanned", "order_completed"], SINCE, UNTIL)
    assert (activation.cohort_users, activation.retained_users) == (4, 1)


async def test_another_brands_key_sees_only_its_own_events(population) -> None:
    client, _, brand_a, brand_b = population
    answer = await client.get("/v1/kpis/funnel", headers=brand_b.headers,
                              params={"steps": ",".join(STEPS), "window": "7d", **RANGE})
    assert [s["users"] for s in answer.json()["steps"]] == [1, 1, 1]
    retention = await client.get("/v1/kpis/retention", headers=brand_b.headers,
                                 params={"start": "user_session_started", "return": "product_scanned", **RANGE})
    assert retention.json() == {"cohort_users": 1, "retained_users": 0, "rate": 0.0}
    # A's user u1 is unknown to B, exactly like a user that does not exist
    foreign = await client.get("/v1/users/u1/analytics", headers=brand_b.headers)
    unknown = await client.get("/v1/users/nobody-at-all/analytics", headers=brand_b.headers)
    assert (foreign.status_code, unknown.status_code) == (404, 404)
    assert foreign.json()["title"] == unknown.json()["title"] == "Unknown user"
    mine = await client.get("/v1/users/u1/analytics", headers=brand_a.headers)
    assert mine.json()["actions"] == {"order_completed": 1, "points_awarded": 1, "product_scanned": 3,
                                      "user_session_started": 1}


async def test_bad_requests_are_answered_with_the_field_and_no_key_with_401(population) -> None:
    client, _, brand_a, _ = population
    cases = [
        ({"steps": "only_one"}, "steps"),
        ({"steps": "a,b", "order": "sideways"}, "order"),
        ({"steps": "a,b", "window": "forever"}, "window"),
        ({"steps": "a,b", "since": "not-a-time"}, "since"),
        ({"steps": "a,b", "since": "2026-10-09T00:00:00Z", "until": "2026-10-08T00:00:00Z"}, "since"),
    ]
    for params, field in cases:
        answer = await client.get("/v1/kpis/funnel", headers=brand_a.headers, params=params)
        assert (answer.status_code, answer.json()["field"]) == (422, field), params
    assert (await client.get("/v1/kpis/funnel", params={"steps": "a,b"})).status_code == 401
    from prometheus_client import REGISTRY

    counted = REGISTRY.get_sample_value("synergy_analytics_requests_total",
                                        {"route": "/v1/kpis/funnel", "status": "422"})
    assert counted is not None and counted >= len(cases)
    wrong = await client.get("/v1/kpis/funnel", params={"steps": "a,b"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


async def test_queries_read_only_the_months_they_need(population) -> None:
    """Partition pruning: the population's range (October, plus a 7-day window) reads October's partition
    only, though the service made partitions for the months around now."""
    _, pool, brand_a, _ = population
    window = timedelta(days=7)
    async with pool.acquire() as conn:
        partitions = {r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'user_action_log'::regclass")}
        assert {"user_action_log_2026_10", "user_action_log_2026_12", "user_action_log_2027_01"} <= partitions
        for sql, args in [
            (queries.ordered_funnel_sql(3), (int(brand_a.brand_id), SINCE, UNTIL, window, UNTIL + window, *STEPS)),
            (queries.strict_funnel_sql(3), (int(brand_a.brand_id), SINCE, UNTIL, window, UNTIL + window, *STEPS)),
        ]:
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN (COSTS OFF) {sql}", *args))
            scanned = {p for p in partitions if p in plan}
            assert scanned == {"user_action_log_2026_10"}, plan
    assert DAY0.month == 10

"""Each event logged once under redelivery; dead letters for what cannot be logged; the read models after
referral and wishlist flows, seen through the brand's own key only."""

from __future__ import annotations

import pytest

from tests.integration.analytics.harness import analytics_service, logged_ids, make_brand, publish, wait_for
from tests.unit.analytics.population import envelopes

pytestmark = pytest.mark.integration


async def test_each_event_is_logged_once_when_the_topic_is_read_again_and_sent_twice(
    kafka_bootstrap, database_url, topic_factory, kafka_producer, db
) -> None:
    brand = await make_brand(db)
    events = envelopes(brand.brand_id, prefix="r")
    sent = sorted(e["event_id"] for e in events)
    topic = await topic_factory(3, prefix="analytics.redelivery")
    await publish(kafka_producer, topic, events)
    await publish(kafka_producer, topic, events)  # the client's retry: same event ids
    async with analytics_service(kafka_bootstrap, database_url, topic_factory, topics=[topic]) as (_, running, _t):
        await wait_for(lambda: _settled(running, 2 * len(events)))
    # a second consumer group reads the whole topic again: a full redelivery
    async with analytics_service(kafka_bootstrap, database_url, topic_factory, topics=[topic]) as (_, running, _t):
        await wait_for(lambda: _settled(running, 2 * len(events)))
    assert await logged_ids(db, brand.brand_id) == sent
    rows = await db.fetch("SELECT event_id, occurred_at, action_type FROM user_action_log WHERE brand_id = $1 "
                          "AND event_id = $2", int(brand.brand_id), sent[0])
    assert [(r["action_type"], r["occurred_at"].isoformat()) for r in rows] == [
        ("user_session_started", "2026-10-05T00:00:00+00:00")]


async def _settled(running, count: int) -> bool:
    """Every record consumed so far is settled: the done prefix of each partition covers `count` records."""
    tracker = running.processor.commits.tracker
    done = sum(max(p.committable() or 0, tracker.last_committed(tp) or 0) for tp, p in tracker.partitions.items())
    return done >= count


async def test_what_cannot_be_logged_is_dead_lettered_and_the_rest_is_written(
    kafka_bootstrap, database_url, topic_factory, kafka_producer, db
) -> None:
    brand = await make_brand(db)
    good = envelopes(brand.brand_id, prefix="p")[:4]
    bad_brand = {**good[0], "event_id": "p-bad-brand", "brand_id": "acme"}
    no_time = {**good[0], "event_id": "p-no-time", "timestamp": None}
    topic = await topic_factory(1, prefix="analytics.poison")
    await publish(kafka_producer, topic, [good[0], b"{not json", bad_brand, good[1], no_time, good[2], good[3]])
    async with analytics_service(kafka_bootstrap, database_url, topic_factory, topics=[topic]):
        async def dead_lettered() -> bool:
            return await db.fetchval("SELECT count(*) FROM dlq_messages WHERE service = 'analytics' "
                                     "AND source_topic = $1", topic) == 3
        await wait_for(dead_lettered)
        await wait_for(lambda: _count(db, brand.brand_id, 4))
    assert await logged_ids(db, brand.brand_id) == sorted(e["event_id"] for e in good)
    letters = await db.fetch("SELECT source_offset, reason FROM dlq_messages WHERE source_topic = $1 "
                             "ORDER BY source_offset", topic)
    assert [r["source_offset"] for r in letters] == [1, 2, 4]
    assert [r["reason"] for r in letters][1:] == ["unusable_event", "unusable_event"]


async def _count(db, brand_id: str, n: int) -> bool:
    return len(await logged_ids(db, brand_id)) == n


def track(brand_id: str, event_id: str, name: str, user: str, at: str, data: dict) -> dict:
    return {"event_id": f"{brand_id}-{event_id}", "type": "track", "name": name, "brand_id": brand_id, "identifiers": {"id": user},
            "data": data, "timestamp": at, "source": "ingest"}


@pytest.mark.parametrize("conversion_first", [False, True], ids=["as-it-happened", "conversion-consumed-first"])
async def test_read_models_after_a_referral_and_a_wishlist_flow(
    kafka_bootstrap, database_url, topic_factory, kafka_producer, db, conversion_first
) -> None:
    """The referee's conversion and the referrer's events have different keys, so they may be consumed in
    either order; the read models come out the same."""
    brand, other = await make_brand(db, "Referrals"), await make_brand(db, "Other")
    b = brand.brand_id
    flow = [
        track(b, "rf-1", "referral_initiated", "user-123", "2026-11-02T10:00:00Z",
              {"referral_data": {"referring_user_id": 123, "referral_code": "JANE1A2B",
                                 "referral_method": "share_link"}}),
        track(b, "rf-2", "wishlist_item_added", "user-123", "2026-11-02T10:05:00Z",
              {"wishlist_data": {"wishlist_item_id": "wishlist-item-789", "points_needed": 1000,
                                 "referrals_needed": 1},
               "user_snapshot": {"economy": {"points_balance": 200}}}),
        track(b, "rf-3", "wishlist_added", "user-123", "2026-11-02T10:06:00Z",
              {"wishlist_data": {"wishlist_item_id": "wishlist-item-790", "points_needed": 50}}),
        track(b, "rf-4", "wishlist_item_removed", "user-123", "2026-11-02T10:07:00Z",
              {"wishlist_data": {"wishlist_item_id": "wishlist-item-790"}}),
        track(b, "rf-5", "referral_converted", "user-456", "2026-11-03T09:00:00Z",
              {"referral_data": {"referrer_user_id": 123, "referred_user_id": 456,
                                 "referral_code_used": "JANE1A2B", "points_awarded_to_referrer": 500}}),
        track(b, "rf-6", "product_scanned", "user-123", "2026-11-04T12:00:00Z",
              {"user_snapshot": {"economy": {"points_balance": 1200}}}),
    ]
    if conversion_first:
        flow = [flow[4], *flow[:4], flow[5]]
    topic = await topic_factory(1, prefix="analytics.flows")
    await publish(kafka_producer, topic, flow + flow)  # everything twice: the read models must not double
    async with analytics_service(kafka_bootstrap, database_url, topic_factory, topics=[topic]) as (client, running, _):
        await wait_for(lambda: _count(db, b, 6))
        await wait_for(lambda: _settled(running, 12))
        answer = await client.get("/v1/users/user-123/analytics", headers=brand.headers)
        foreign = await client.get("/v1/users/user-123/analytics", headers=other.headers)
    assert answer.status_code == 200
    body = answer.json()
    assert body["referral_codes"] == ["JANE1A2B"]
    assert body["referrals"] == [{"referral_code": "JANE1A2B", "status": "converted",
                                  "points_awarded_to_referrer": 500,
                                  "converted_at": "2026-11-03T09:00:00+00:00", "referee": "user-456"}]
    assert [(w["wishlist_item_id"], w["points_needed"], w["referrals_needed"]) for w in body["wishlist"]] == [
        ("wishlist-item-789", 1000, 1)]
    assert body["goals"] == [
        {"wishlist_item_id": "wishlist-item-789", "goal_type": "wishlist_item", "target_points": 1000,
         "target_referrals": 1, "current_points": 1200, "current_referrals": 1, "is_active": False,
         "completed_at": "2026-11-04T12:00:00+00:00"},
        {"wishlist_item_id": "wishlist-item-790", "goal_type": "wishlist_item", "target_points": 50,
         "target_referrals": None, "current_points": 200, "current_referrals": 0, "is_active": False,
         "completed_at": "2026-11-02T10:06:00+00:00"},  # the balance seen at 10:05 already covered it
    ]
    assert foreign.status_code == 404
    assert await db.fetchval("SELECT count(*) FROM referrals WHERE brand_id = $1", int(b)) == 1

"""The four triggers end to end: events into Kafka, the marketing service in-process, what reached
synergy.marketing.v1, what Postgres holds and what the queue API answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from tests.integration.marketing.harness import (
    envelope,
    eventually,
    make_brand,
    marketing_api,
    new_user,
    queue_rows,
    send,
    triggers_in,
)

GUIDE = {"product_id": "prod_001", "product_name": "Christian Voter Guide", "quantity": 1, "price": 19.99,
         "image_url": "https://img.example/001.png"}


def rows_of(marketing, user):
    async def read():
        return await queue_rows(marketing.db, marketing.brand, user)
    return read


async def test_an_abandoned_cart_fires_once_with_every_field(marketing, kafka_producer, consume_all) -> None:
    user = new_user()
    await marketing.db.execute(
        "INSERT INTO email_preferences (brand_id, user_id, email) VALUES ($1, $2, 'customer@example.com')",
        marketing.brand.pk, user)
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "cart_item_added", {**GUIDE, "quantity": 2, "currency": "USD"}, user=user),
               envelope(marketing.brand, "cart_item_added", {"product_id": "prod_002", "price": 5}, user=user))
    (row,) = await eventually(rows_of(marketing, user), what="the cart's queue item")
    assert (row["status"], row["reason"], row["trigger_type"], row["event_name"]) == (
        "sent", None, "abandoned_cart", "cart_abandoned")
    records = await consume_all(marketing.topic, where=lambda r: r.key == f"{marketing.brand.brand_id}:{user}".encode(),
                                count=1)
    (message,) = triggers_in(records, marketing.brand)
    data = message["data"]
    assert message["name"] == "cart_abandoned" and message["identifiers"] == {"id": user}
    assert message["event_id"] == row["event_id"].strip()
    assert data["cart_items"] == [
        {"product_id": "prod_001", "product_name": "Christian Voter Guide", "quantity": 2, "price": 19.99,
         "image_url": "https://img.example/001.png"},
        {"product_id": "prod_002", "quantity": 1, "price": 5},
    ]
    assert data["cart_total"] == 44.98
    assert data["currency"] == "USD"
    assert (data["discount_code"], data["discount_amount"]) == ("CART10", 10)
    assert (data["email_template"], data["email_subject"]) == ("abandoned_cart_v1", "You left items in your cart! \U0001f6d2")
    assert data["queue_id"] == row["queue_id"] and data["trigger_type"] == "abandoned_cart"
    assert data["unsubscribe_url"].startswith("http://marketing.test/unsubscribe?token=")
    assert data["preferences_url"].startswith("http://marketing.test/preferences?token=")
    assert data["list_unsubscribe"] == f"<{data['unsubscribe_url']}>"
    assert data["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
    assert row["user_email"] == "customer@example.com"
    answer = await marketing_api(marketing.client, marketing.brand, user)
    assert answer.status_code == 200
    (item,) = answer.json()["items"]
    assert (item["queue_id"], item["status"], item["trigger_type"]) == (row["queue_id"], "sent", "abandoned_cart")
    assert item["trigger_data"]["cart_total"] == 44.98
    # Nothing fires a second time: the timer is fired and the cart has not changed.
    await asyncio.sleep(1.5)
    assert len(await queue_rows(marketing.db, marketing.brand, user)) == 1
    metrics = (await marketing.client.get("/metrics")).text
    sent_line = f'synergy_marketing_triggers_total{{brand="{marketing.brand.brand_id}",outcome="sent",trigger="cart_abandoned"}}'
    assert any(line.startswith(sent_line) and float(line.split()[-1]) >= 1 for line in metrics.splitlines())
    assert any(line.startswith("synergy_marketing_timer_lateness_seconds_count") and float(line.split()[-1]) >= 1
               for line in metrics.splitlines())
    assert "synergy_marketing_timers_pending " in metrics
    assert "synergy_marketing_oldest_due_timer_lateness_seconds " in metrics
    assert any(line.startswith("synergy_streaming_consumer_lag{") and 'service="marketing"' in line
               and marketing.events in line for line in metrics.splitlines())


async def test_an_order_exits_the_cart_flow_and_an_emptied_cart_does_not_fire(marketing, kafka_producer) -> None:
    ordered, emptied, control = new_user(), new_user(), new_user()
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "cart_item_added", GUIDE, user=ordered),
               envelope(marketing.brand, "order_completed", {"order_id": "o-1", "order_total": 19.99}, user=ordered),
               envelope(marketing.brand, "cart_item_added", GUIDE, user=emptied),
               envelope(marketing.brand, "cart_item_removed", {"product_id": "prod_001"}, user=emptied))
    # The control's cart is due after theirs: once it fired, their deadlines had passed too.
    await asyncio.sleep(0.5)
    await send(kafka_producer, marketing.events, envelope(marketing.brand, "cart_item_added", GUIDE, user=control))
    await eventually(rows_of(marketing, control), what="the control cart")
    assert await queue_rows(marketing.db, marketing.brand, ordered) == []
    assert await queue_rows(marketing.db, marketing.brand, emptied) == []
    pending = await marketing.db.fetchval(
        "SELECT count(*) FROM marketing_timers WHERE brand_id = $1 AND person = ANY($2::text[])",
        marketing.brand.pk, [ordered, emptied])
    assert pending == 0


async def test_three_views_make_a_browse_abandonment_and_two_do_not(marketing, kafka_producer, consume_all) -> None:
    browser, two_views = new_user(), new_user()
    view = {"product_id": "prod_777", "product_name": "Study Bible", "product_price": 49.5,
            "product_category": "Books", "image_url": "https://img.example/777.png"}
    now = datetime.now(UTC)
    await send(kafka_producer, marketing.events,
               *[envelope(marketing.brand, "product_viewed", view, user=two_views, at=now + timedelta(milliseconds=i))
                 for i in range(2)],
               *[envelope(marketing.brand, "product_viewed", view, user=browser, at=now + timedelta(milliseconds=i))
                 for i in range(3)])
    (row,) = await eventually(rows_of(marketing, browser), what="the browse abandonment")
    assert (row["status"], row["trigger_type"], row["discount_code"], row["discount_amount"]) == (
        "sent", "browse_abandonment", "BROWSE5", 5)
    assert row["trigger_data"]["product"] == {
        "product_id": "prod_777", "product_name": "Study Bible", "product_category": "Books",
        "product_price": 49.5, "image_url": "https://img.example/777.png", "view_count": 3,
        "last_viewed_at": (now + timedelta(milliseconds=2)).isoformat(timespec="microseconds").replace("+00:00", "Z")}
    assert row["email_subject"] == "Still interested in Study Bible? \U0001f914"
    records = await consume_all(marketing.topic, where=lambda r: r.key == f"{marketing.brand.brand_id}:{browser}".encode(),
                                count=1)
    assert [m["name"] for m in triggers_in(records, marketing.brand)] == ["browse_abandoned"]
    assert await queue_rows(marketing.db, marketing.brand, two_views) == []


async def test_a_price_drop_fans_out_to_three_watchers_once_each(marketing, kafka_producer, consume_all) -> None:
    product = f"prod_{new_user()}"
    watchers = [new_user() for _ in range(3)]
    not_low_enough = new_user()
    await send(kafka_producer, marketing.events,
               *[envelope(marketing.brand, "watchlist_item_added",
                          {"product_id": product, "product_name": "Hymnal", "current_price": 30, "target_price": 25},
                          user=u) for u in watchers],
               envelope(marketing.brand, "watchlist_item_added",
                        {"product_id": product, "product_name": "Hymnal", "current_price": 30, "target_price": 10},
                        user=not_low_enough))
    await eventually(lambda: marketing.db.fetchval(
        "SELECT count(*) = 4 FROM watch_list WHERE brand_id = $1 AND product_id = $2", marketing.brand.pk, product),
        what="the four watches")
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "product_price_changed", {"product_id": product, "new_price": 20},
                        user="catalog"))
    await asyncio.sleep(0.3)
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "product_price_changed", {"product_id": product, "new_price": 19},
                        user="catalog"))

    async def three_rows():
        rows = await marketing.db.fetch(
            "SELECT user_id, trigger_type, status, trigger_data FROM marketing_queue WHERE brand_id = $1"
            " AND trigger_data -> 'product' ->> 'product_id' = $2", marketing.brand.pk, product)
        return rows if len(rows) >= 3 else None

    rows = await eventually(three_rows, what="three price drops")
    await asyncio.sleep(1.0)  # the second change must not add a second item per watch
    rows = await three_rows()
    assert sorted((r["user_id"], r["trigger_type"], r["status"]) for r in rows) == sorted(
        (u, "price_drop", "sent") for u in watchers)
    assert {(r["trigger_data"]["old_price"], r["trigger_data"]["new_price"], r["trigger_data"]["savings"])
            for r in rows} == {(30, 20, 10)}
    def drops_in(records):
        return [m for m in triggers_in(records, marketing.brand)
                if m["data"].get("product", {}).get("product_id") == product]

    drops = drops_in(await consume_all(marketing.topic, until=lambda rs: len(drops_in(rs)) >= 3))
    assert sorted(m["identifiers"]["id"] for m in drops) == sorted(watchers)
    assert {m["name"] for m in drops} == {"price_dropped"}


async def test_back_in_stock_fires_for_the_watcher_of_an_out_of_stock_product(marketing, kafka_producer) -> None:
    product = f"prod_{new_user()}"
    watcher = new_user()
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "product_stock_changed", {"product_id": product, "in_stock": False},
                        user="catalog"))
    await eventually(lambda: marketing.db.fetchval(
        "SELECT in_stock = FALSE FROM marketing_products WHERE brand_id = $1 AND product_id = $2",
        marketing.brand.pk, product), what="the stock-out")
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "watchlist_item_added", {"product_id": product, "product_name": "Candle"},
                        user=watcher))
    await eventually(lambda: marketing.db.fetchval(
        "SELECT count(*) = 1 FROM watch_list WHERE brand_id = $1 AND product_id = $2", marketing.brand.pk, product),
        what="the watch")
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "product_stock_changed", {"product_id": product, "in_stock": True,
                                                                   "quantity": 12}, user="catalog"))
    (row,) = await eventually(rows_of(marketing, watcher), what="back in stock")
    assert (row["status"], row["trigger_type"], row["email_subject"]) == ("sent", "back_in_stock",
                                                                          "Back in stock: Candle")
    assert row["trigger_data"]["product"] == {"product_id": product, "product_name": "Candle"}
    assert row["trigger_data"]["quantity"] == 12


async def test_preferences_unsubscribe_frequency_cap_and_smart_sending_suppress_with_their_reasons(
    marketing, kafka_producer, consume_all
) -> None:
    no_cart_mails, unsubscribed, capped, smart = new_user(), new_user(), new_user(), new_user()
    await marketing.db.execute(
        "INSERT INTO email_preferences (brand_id, user_id, abandoned_cart_emails) VALUES ($1, $2, FALSE)",
        marketing.brand.pk, no_cart_mails)
    await marketing.db.execute(
        "INSERT INTO email_preferences (brand_id, user_id, unsubscribed) VALUES ($1, $2, TRUE)",
        marketing.brand.pk, unsubscribed)
    await send(kafka_producer, marketing.events,
               *[envelope(marketing.brand, "cart_item_added", GUIDE, user=u) for u in (no_cart_mails, unsubscribed,
                                                                                   capped, smart)])
    await eventually(rows_of(marketing, capped), what="the first cart of the capped user")
    await eventually(rows_of(marketing, smart), what="the first cart of the smart-sending user")
    # A second cart for one (same trigger type within the cap), a browse for the other (any type, 16 h).
    view = {"product_id": "prod_555", "product_name": "Rosary"}
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "cart_item_added", {"product_id": "prod_002"}, user=capped),
               *[envelope(marketing.brand, "product_viewed", view, user=smart) for _ in range(3)])

    async def decided(user, count):
        async def read():
            rows = await queue_rows(marketing.db, marketing.brand, user)
            return rows if len(rows) >= count else None
        return await eventually(read, what=f"{count} items for {user}")

    assert [(r["status"], r["reason"]) for r in await decided(no_cart_mails, 1)] == [("suppressed", "preferences")]
    assert [(r["status"], r["reason"]) for r in await decided(unsubscribed, 1)] == [("suppressed", "unsubscribed")]
    assert [(r["event_name"], r["status"], r["reason"]) for r in await decided(capped, 2)] == [
        ("cart_abandoned", "sent", None), ("cart_abandoned", "suppressed", "frequency_cap")]
    assert [(r["event_name"], r["status"], r["reason"]) for r in await decided(smart, 2)] == [
        ("cart_abandoned", "sent", None), ("browse_abandoned", "suppressed", "smart_sending")]
    answer = (await marketing_api(marketing.client, marketing.brand, capped)).json()
    assert [(i["status"], i.get("reason")) for i in answer["items"]] == [("suppressed", "frequency_cap"),
                                                                          ("sent", None)]
    # Only the two first carts reached Kafka.
    records = await consume_all(marketing.topic)
    sent_to = sorted(m["identifiers"]["id"] for m in triggers_in(records, marketing.brand)
                     if m["identifiers"]["id"] in (no_cart_mails, unsubscribed, capped, smart))
    assert sent_to == sorted([capped, smart])


async def test_a_replay_of_last_months_events_sends_nothing(marketing, kafka_producer, consume_all) -> None:
    user = new_user()
    product = f"prod_{user}"
    month_ago = datetime.now(UTC) - timedelta(days=30)
    history = [
        envelope(marketing.brand, "cart_item_added", GUIDE, user=user, at=month_ago),
        *[envelope(marketing.brand, "product_viewed", {"product_id": "prod_9"}, user=user,
                   at=month_ago + timedelta(minutes=i)) for i in range(3)],
        envelope(marketing.brand, "watchlist_item_added", {"product_id": product, "current_price": 10}, user=user,
                 at=month_ago),
        envelope(marketing.brand, "product_price_changed", {"product_id": product, "new_price": 5}, user="catalog",
                 at=month_ago + timedelta(hours=1)),
    ]
    await send(kafka_producer, marketing.events, *history[:-1])
    await eventually(lambda: marketing.db.fetchval(
        "SELECT count(*) = 1 FROM watch_list WHERE brand_id = $1 AND product_id = $2", marketing.brand.pk, product),
        what="the watch")
    await send(kafka_producer, marketing.events, history[-1])

    async def three():
        rows = await queue_rows(marketing.db, marketing.brand, user)
        return rows if len(rows) >= 3 else None

    rows = await eventually(three, what="three stale decisions")
    assert sorted((r["event_name"], r["status"], r["reason"]) for r in rows) == [
        ("browse_abandoned", "suppressed", "stale"), ("cart_abandoned", "suppressed", "stale"),
        ("price_dropped", "suppressed", "stale")]
    records = await consume_all(marketing.topic)
    assert [m for m in triggers_in(records, marketing.brand) if m["identifiers"]["id"] == user] == []


async def test_anonymous_views_and_cart_join_the_user_at_identify(marketing, kafka_producer) -> None:
    anonymous, user = f"anon-{new_user()}", new_user()
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "cart_item_added", GUIDE, anonymous=anonymous))
    await asyncio.sleep(2.5)  # past the window: an anonymous cart does not fire
    assert await marketing.db.fetchval(
        "SELECT count(*) FROM marketing_queue WHERE brand_id = $1 AND user_id LIKE 'anon:%'", marketing.brand.pk) == 0
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, None, {}, user=user, anonymous=anonymous, type_="identify"))
    (row,) = await eventually(rows_of(marketing, user), what="the joined cart")
    assert (row["event_name"], row["status"]) == ("cart_abandoned", "sent")
    assert [i["product_id"] for i in row["trigger_data"]["cart_items"]] == ["prod_001"]
    assert await marketing.db.fetchval(
        "SELECT count(*) FROM carts WHERE brand_id = $1 AND person = $2", marketing.brand.pk, f"anon:{anonymous}") == 0


async def test_a_redelivered_event_changes_nothing(marketing, kafka_producer) -> None:
    user = new_user()
    once = envelope(marketing.brand, "product_viewed", {"product_id": "prod_1"}, user=user)
    await send(kafka_producer, marketing.events, once, once, once)
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "product_viewed", {"product_id": "prod_1"}, user=user))
    await eventually(lambda: marketing.db.fetchval(
        "SELECT view_count = 2 FROM product_views WHERE brand_id = $1 AND person = $2", marketing.brand.pk, user),
        what="the two distinct views")
    await send(kafka_producer, marketing.events, once)
    await asyncio.sleep(1.0)
    assert await marketing.db.fetchval(
        "SELECT view_count FROM product_views WHERE brand_id = $1 AND person = $2", marketing.brand.pk, user) == 2
    # A redelivered cart change leaves its pending deadline alone: the cart still fires, once.
    cart = envelope(marketing.brand, "cart_item_added", GUIDE, user=user)
    await send(kafka_producer, marketing.events, cart)
    await eventually(lambda: marketing.db.fetchval(
        "SELECT count(*) = 1 FROM marketing_timers WHERE brand_id = $1 AND person = $2 AND fired_at IS NULL",
        marketing.brand.pk, user), what="the pending cart deadline")
    await send(kafka_producer, marketing.events, cart)
    (row,) = await eventually(rows_of(marketing, user), what="the cart message")
    assert (row["event_name"], row["status"]) == ("cart_abandoned", "sent")


async def test_orders_convert_and_customer_io_opens_and_clicks_are_counted(marketing, kafka_producer) -> None:
    by_ref, latest = new_user(), new_user()
    await send(kafka_producer, marketing.events,
               *[envelope(marketing.brand, "cart_item_added", GUIDE, user=u) for u in (by_ref, latest)])
    (ref_item,) = await eventually(rows_of(marketing, by_ref), what="the first cart")
    (latest_item,) = await eventually(rows_of(marketing, latest), what="the second cart")
    await send(kafka_producer, marketing.events,
               envelope(marketing.brand, "order_completed", {"order_id": "ord-1", "order_total": 19.99,
                                                             "ref": f"email_{ref_item['queue_id']}"}, user=by_ref),
               envelope(marketing.brand, "order_completed", {"order_id": "ord-2", "order_total": 25}, user=latest))
    opened = {"metric": "opened", "object_type": "email", "trigger_event_id": latest_item["event_id"].strip()}
    clicked = {"metric": "clicked", "object_type": "email", "trigger_event_id": ref_item["event_id"].strip()}
    await send(kafka_producer, marketing.insights,
               envelope(marketing.brand, "email_opened", opened, user=latest),
               envelope(marketing.brand, "email_clicked", clicked, user=by_ref))

    async def converted():
        rows = await marketing.db.fetch(
            "SELECT queue_id, status, conversion_order_id, conversion_revenue, opened, clicked FROM marketing_queue"
            " WHERE queue_id = ANY($1::text[]) ORDER BY conversion_order_id",
            [ref_item["queue_id"], latest_item["queue_id"]])
        done = all(r["status"] == "converted" for r in rows) and any(r["clicked"] for r in rows) and all(
            r["opened"] for r in rows)
        return rows if done else None

    rows = await eventually(converted, what="both conversions and engagements")
    assert [(r["queue_id"], r["conversion_order_id"], float(r["conversion_revenue"]), r["opened"], r["clicked"])
            for r in rows] == [(ref_item["queue_id"], "ord-1", 19.99, True, True),
                               (latest_item["queue_id"], "ord-2", 25.0, True, False)]
    summary = await marketing.client.get("/v1/marketing/summary", headers=marketing.brand.auth)
    assert summary.status_code == 200
    cart = next(t for t in summary.json()["triggers"] if t["trigger"] == "cart_abandoned")
    assert cart["converted"] >= 2 and cart["recovered_revenue"] >= 44.99
    metrics = (await marketing.client.get("/metrics")).text
    line = f'synergy_marketing_recovered_revenue_total{{brand="{marketing.brand.brand_id}",trigger="cart_abandoned"}} '
    (value,) = [float(row[len(line):]) for row in metrics.splitlines() if row.startswith(line)]
    assert abs(value - 44.99) < 1e-6


async def test_the_queue_of_another_brands_user_is_a_404_exactly_like_an_unknown_one(marketing, kafka_producer) -> None:
    user = new_user()
    await send(kafka_producer, marketing.events, envelope(marketing.brand, "product_viewed", {"product_id": "p"},
                                                          user=user))
    await eventually(lambda: marketing.db.fetchval(
        "SELECT count(*) FROM product_views WHERE brand_id = $1 AND person = $2", marketing.brand.pk, user))
    mine = await marketing_api(marketing.client, marketing.brand, user)
    assert mine.status_code == 200 and mine.json() == {"user_id": user, "items": []}
    theirs = await marketing_api(marketing.client, marketing.other_brand, user)
    unknown = await marketing_api(marketing.client, marketing.other_brand, new_user())
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.headers["content-type"] == unknown.headers["content-type"] == "application/problem+json"
    assert {k: v for k, v in theirs.json().items() if k != "detail"} == {
        k: v for k, v in unknown.json().items() if k != "detail"}
    no_key = await marketing.client.get(f"/v1/users/{user}/marketing")
    assert no_key.status_code == 401 and no_key.json()["field"] == "Authorization"
    bad_limit = await marketing.client.get(f"/v1/users/{user}/marketing?limit=0", headers=marketing.brand.auth)
    assert bad_limit.status_code == 422 and bad_limit.json()["field"] == "limit"


async def test_malformed_events_are_dead_lettered_and_the_rest_applied(marketing, kafka_producer) -> None:
    user = new_user()
    await kafka_producer.send_and_wait(marketing.events, b"{not json", key=b"x")
    bad = envelope(marketing.brand, "cart_item_added", {"product_id": "p", "price": "free"}, user=user)
    good = envelope(marketing.brand, "product_viewed", {"product_id": "p"}, user=user)
    await send(kafka_producer, marketing.events, bad, good)
    await eventually(lambda: marketing.db.fetchval(
        "SELECT count(*) FROM product_views WHERE brand_id = $1 AND person = $2", marketing.brand.pk, user),
        what="the good event")
    letters = await eventually(lambda: marketing.db.fetch(
        "SELECT reason, event_id FROM dlq_messages WHERE service = 'marketing' AND source_topic = $1"
        " ORDER BY source_offset", marketing.events), what="the dead letters")
    reasons = {(r["reason"], r["event_id"]) for r in letters}
    assert ("invalid_event", bad["event_id"]) in reasons
    assert any(r[0] == "malformed_message" for r in reasons)
    assert await marketing.db.fetchval(
        "SELECT count(*) FROM carts WHERE brand_id = $1 AND person = $2", marketing.brand.pk, user) == 0


async def test_brand_settings_set_the_discount_code(marketing, kafka_producer) -> None:
    brand = await make_brand(marketing.db, "Discounts", {"marketing": {"discounts": {
        "cart_abandoned": {"code": "SAVE15", "amount": 15}}}})
    user = new_user()
    await send(kafka_producer, marketing.events, envelope(brand, "cart_item_added", GUIDE, user=user))

    async def read():
        return await queue_rows(marketing.db, brand, user)

    (row,) = await eventually(read, what="the cart")
    assert (row["discount_code"], row["discount_amount"], row["message_data"]["discount_code"]) == (
        "SAVE15", 15, "SAVE15")


async def test_retention_drops_views_after_90_days_and_sent_items_30_days_after_sending(marketing) -> None:
    from synergy_marketing.store import purge_expired

    old, recent = new_user(), new_user()
    for person, days in ((old, 91), (recent, 89)):
        await marketing.db.execute(
            "INSERT INTO product_views (brand_id, person, product_id, first_viewed_at, last_viewed_at)"
            " VALUES ($1, $2, 'p', now() - make_interval(days => $3), now() - make_interval(days => $3))",
            marketing.brand.pk, person, days)
    for person, days in ((old, 31), (recent, 29)):
        await marketing.db.execute(
            "INSERT INTO marketing_queue (queue_id, brand_id, user_id, trigger_type, event_name, event_id,"
            " trigger_data, scheduled_send_time, status, sent, sent_at)"
            " VALUES ($1, $2, $3, 'abandoned_cart', 'cart_abandoned', $4, '{}', now(), 'sent', TRUE,"
            " now() - make_interval(days => $5))",
            f"queue_retention_{person}", marketing.brand.pk, person, f"{person:0<26}"[:26].upper(), days)
    await purge_expired(marketing.db)
    views = await marketing.db.fetch(
        "SELECT person FROM product_views WHERE brand_id = $1 AND person = ANY($2::text[])",
        marketing.brand.pk, [old, recent])
    queue = await marketing.db.fetch(
        "SELECT user_id FROM marketing_queue WHERE brand_id = $1 AND user_id = ANY($2::text[])",
        marketing.brand.pk, [old, recent])
    assert [r["person"] for r in views] == [recent]
    assert [r["user_id"] for r in queue] == [recent]

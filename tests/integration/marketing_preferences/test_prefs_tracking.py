"""Open and click tracking and recommendations against real Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from synergy_marketing.tracking import PIXEL_GIF

from tests.integration.marketing_preferences.harness import insert_queue_item, make_user

MESSAGE = {
    "queue_id": "placeholder",
    "trigger_data": {
        "cart_items": [{"product_id": "prod_001", "image_url": "https://cdn.shop.example.com/p1.jpg"}],
        "cart_total": 1999,
    },
    "checkout_url": "https://shop.example.com/checkout?ref=email",
    "unsubscribe_url": "http://marketing.test/unsubscribe?token=abc",
    "discount_code": "CART10",
}


async def queue_row(marketing, queue_id: str) -> dict:
    return dict(
        await marketing.db.fetchrow(
            "SELECT opened, opened_at, clicked, clicked_at FROM marketing_queue WHERE queue_id = $1", queue_id
        )
    )


async def test_the_open_pixel_is_a_gif_and_records_the_first_open_only(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    queue_id = await insert_queue_item(marketing.db, marketing.brand, user, MESSAGE)
    first = await marketing.client.get(f"/track/email-open?queue_id={queue_id}")
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/gif"
    assert first.content == PIXEL_GIF
    assert "no-store" in first.headers["cache-control"]
    row = await queue_row(marketing, queue_id)
    assert row["opened"] is True and row["opened_at"] is not None
    assert row["clicked"] is False
    await marketing.client.get(f"/track/email-open?queue_id={queue_id}")
    assert (await queue_row(marketing, queue_id))["opened_at"] == row["opened_at"]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?queue_id=",
        "?queue_id=nope",
        "?queue_id=" + "x" * 500,
        "?queue_id=%00%01",
        "?queue_id=a&queue_id=b",
        "?other=1",
        "?queue_id=%ff%fe",
    ],
)
async def test_the_open_pixel_answers_a_gif_to_junk(marketing, query) -> None:
    response = await marketing.client.get(f"/track/email-open{query}")
    assert response.status_code == 200
    assert response.content == PIXEL_GIF


async def test_a_suppressed_item_is_never_marked_opened(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    queue_id = await insert_queue_item(marketing.db, marketing.brand, user, MESSAGE, status="suppressed")
    assert (await marketing.client.get(f"/track/email-open?queue_id={queue_id}")).status_code == 200
    assert (await queue_row(marketing, queue_id))["opened"] is False


async def test_a_click_to_a_url_the_message_carried_is_recorded_and_redirected(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    queue_id = await insert_queue_item(marketing.db, marketing.brand, user, MESSAGE)
    response = await marketing.client.get(
        "/track/email-click",
        params={"queue_id": queue_id, "redirect": "https://shop.example.com/checkout?ref=email"},
    )
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example.com/checkout?ref=email"
    row = await queue_row(marketing, queue_id)
    assert row["clicked"] is True and row["clicked_at"] is not None
    assert row["opened"] is True  # a click means it was opened, even with images blocked
    nested = await marketing.client.get(
        "/track/email-click", params={"queue_id": queue_id, "redirect": "https://cdn.shop.example.com/p1.jpg"}
    )
    assert nested.status_code == 302
    assert (await queue_row(marketing, queue_id))["clicked_at"] == row["clicked_at"]


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example.net/",
        "https://shop.example.com/checkout",
        "https://shop.example.com/checkout?ref=email&next=https://evil.example.net",
        "//evil.example.net",
        "javascript:alert(1)",
        "CART10",
        "",
    ],
)
async def test_no_open_redirect_to_a_url_the_message_did_not_carry(marketing, target) -> None:
    user = await make_user(marketing.db, marketing.brand)
    queue_id = await insert_queue_item(marketing.db, marketing.brand, user, MESSAGE)
    response = await marketing.client.get(
        "/track/email-click", params={"queue_id": queue_id, "redirect": target}
    )
    assert response.status_code in (400, 404)
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert (await queue_row(marketing, queue_id))["clicked"] is False


async def test_a_url_from_another_queue_item_is_refused(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    mine = await insert_queue_item(
        marketing.db, marketing.brand, user, {"checkout_url": "https://a.example.com/"}
    )
    theirs = await insert_queue_item(
        marketing.db, marketing.brand, user, {"checkout_url": "https://b.example.com/"}
    )
    response = await marketing.client.get(
        "/track/email-click", params={"queue_id": mine, "redirect": "https://b.example.com/"}
    )
    assert response.status_code == 404 and "location" not in response.headers
    assert (await queue_row(marketing, theirs))["clicked"] is False


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?queue_id=nope&redirect=https://shop.example.com/",
        "?redirect=https://x.example.com/",
        "?queue_id=" + "x" * 500 + "&redirect=https://x.example.com/",
        "?queue_id=%00&redirect=%00",
    ],
)
async def test_the_click_route_answers_junk_with_a_4xx_page(marketing, query) -> None:
    response = await marketing.client.get(f"/track/email-click{query}")
    assert 400 <= response.status_code < 500
    assert "location" not in response.headers


async def test_a_click_on_a_suppressed_item_is_not_followed(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    queue_id = await insert_queue_item(marketing.db, marketing.brand, user, MESSAGE, status="suppressed")
    response = await marketing.client.get(
        "/track/email-click",
        params={"queue_id": queue_id, "redirect": "https://shop.example.com/checkout?ref=email"},
    )
    assert response.status_code == 404 and "location" not in response.headers


async def add_view(marketing, person, product, category, views, purchased=False, minutes_ago=10) -> None:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    await marketing.db.execute(
        """INSERT INTO product_views (brand_id, person, user_id, product_id, product_name, product_price,
               product_category, view_count, first_viewed_at, last_viewed_at, purchased)
           VALUES ($1, $2, $2, $3, $4, 19.99, $5, $6, $7, $7, $8)""",
        marketing.brand.pk,
        person,
        product,
        f"Name of {product}",
        category,
        views,
        at,
        purchased,
    )


async def test_recommendations_are_the_popular_products_of_the_most_viewed_category(marketing) -> None:
    me = await make_user(marketing.db, marketing.brand)
    await add_view(marketing, me, "book-1", "Books", 3)
    await add_view(marketing, me, "book-2", "Books", 2)
    await add_view(marketing, me, "cd-1", "Music", 4)
    others = [await make_user(marketing.db, marketing.brand) for _ in range(3)]
    await add_view(marketing, others[0], "book-3", "Books", 1, purchased=True)
    await add_view(marketing, others[1], "book-3", "Books", 1, purchased=True)
    await add_view(marketing, others[2], "book-4", "Books", 9, purchased=True)
    await add_view(marketing, others[0], "book-1", "Books", 1)
    await add_view(marketing, others[1], "cd-2", "Music", 50, purchased=True)
    response = await marketing.client.get(f"/v1/users/{me}/recommendations", headers=marketing.brand.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["category"] == "Books"  # 5 views of Books against 4 of Music
    assert [r["product_id"] for r in body["recommendations"]] == ["book-3", "book-4", "book-1", "book-2"]
    assert body["recommendations"][0] == {
        "product_id": "book-3",
        "product_name": "Name of book-3",
        "product_price": 19.99,
        "product_category": "Books",
        "image_url": None,
    }


async def test_recommendations_of_a_user_without_views_are_empty(marketing) -> None:
    me = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.get(f"/v1/users/{me}/recommendations", headers=marketing.brand.auth)
    assert response.json() == {"user_id": me, "category": None, "recommendations": []}


async def test_recommendations_of_another_brands_user_are_a_404_like_an_unknown_one(marketing) -> None:
    theirs = await make_user(marketing.db, marketing.other_brand)
    foreign = await marketing.client.get(f"/v1/users/{theirs}/recommendations", headers=marketing.brand.auth)
    unknown = await marketing.client.get("/v1/users/nobody/recommendations", headers=marketing.brand.auth)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()

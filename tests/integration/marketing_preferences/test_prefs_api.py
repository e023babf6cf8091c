"""GET/PUT /v1/users/{id}/email-preferences against real Kafka and Postgres."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.integration.marketing_preferences.harness import (
    PUBLIC_URL,
    changes_of,
    envelope_of,
    eventually,
    make_user,
    signer,
    stored_preferences,
)

DEFAULTS = {
    "marketing_emails": True,
    "abandoned_cart_emails": True,
    "browse_abandonment_emails": True,
    "price_drop_alerts": True,
    "back_in_stock_alerts": True,
    "product_recommendations": True,
    "newsletter": True,
    "promotional_emails": True,
    "unsubscribed": False,
}
URL = "/v1/users/{}/email-preferences"


async def test_a_known_user_without_preferences_gets_seed_004s_defaults_and_their_links(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand, email="ann@example.com")
    response = await marketing.client.get(URL.format(user), headers=marketing.brand.auth)
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in DEFAULTS} == DEFAULTS
    assert body["user_id"] == user
    assert body["unsubscribed_at"] is None
    assert body["unsubscribe_url"].startswith(f"{PUBLIC_URL}/unsubscribe?token=")
    assert body["preferences_url"].startswith(f"{PUBLIC_URL}/preferences?token=")
    unsubscribe = signer.verify(body["unsubscribe_url"].split("token=")[1])
    preferences = signer.verify(body["preferences_url"].split("token=")[1])
    assert (unsubscribe.purpose, unsubscribe.brand_id, unsubscribe.user_id) == (
        "unsubscribe",
        marketing.brand.brand_id,
        user,
    )
    assert (preferences.purpose, preferences.brand_id, preferences.user_id) == (
        "preferences",
        marketing.brand.brand_id,
        user,
    )
    # reading creates nothing
    assert await stored_preferences(marketing.db, marketing.brand, user) is None


async def test_another_brands_user_is_a_404_exactly_like_an_unknown_one(marketing) -> None:
    theirs = await make_user(marketing.db, marketing.other_brand)
    await marketing.client.put(
        URL.format(theirs), headers=marketing.other_brand.auth, json={"newsletter": False}
    )
    foreign = await marketing.client.get(URL.format(theirs), headers=marketing.brand.auth)
    unknown = await marketing.client.get(URL.format("nobody-at-all"), headers=marketing.brand.auth)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()
    assert foreign.headers["content-type"] == "application/problem+json"
    # and their preferences were not touched by the read
    stored = await stored_preferences(marketing.db, marketing.other_brand, theirs)
    assert stored is not None and stored["newsletter"] is False


async def test_a_partial_put_changes_only_the_named_fields_and_publishes_one_change(
    marketing, consume_all
) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"newsletter": False, "price_drop_alerts": False}
    )
    assert response.status_code == 200
    assert response.json()["newsletter"] is False and response.json()["price_drop_alerts"] is False
    assert response.json()["abandoned_cart_emails"] is True
    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert stored is not None
    assert {k: stored[k] for k in DEFAULTS} == {**DEFAULTS, "newsletter": False, "price_drop_alerts": False}

    second = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"newsletter": True}
    )
    assert second.status_code == 200
    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert {k: stored[k] for k in DEFAULTS} == {**DEFAULTS, "price_drop_alerts": False}

    key = f"{marketing.brand.brand_id}:{user}".encode()
    records = await consume_all(marketing.topic, 2, where=lambda r: r.key == key, timeout=20)
    events = [envelope_of(r) for r in records]
    assert [e["name"] for e in events] == ["email_preferences_changed", "email_preferences_changed"]
    assert [r.header("event_name") for r in records] == ["email_preferences_changed"] * 2
    assert events[0]["type"] == "identify"
    assert events[0]["identifiers"] == {"id": user}
    assert events[0]["brand_id"] == marketing.brand.brand_id
    assert events[0]["data"] == {
        **DEFAULTS,
        "newsletter": False,
        "price_drop_alerts": False,
        "unsubscribed_at": None,
    }
    assert events[1]["data"] == {**DEFAULTS, "price_drop_alerts": False, "unsubscribed_at": None}
    assert len({e["event_id"] for e in events}) == 2
    audit = await changes_of(marketing.db, marketing.brand, user)
    assert [a["source"] for a in audit] == ["api", "api"]
    assert audit[0]["changes"] == {"newsletter": [True, False], "price_drop_alerts": [True, False]}
    assert [a["envelope"]["event_id"] for a in audit] == [e["event_id"] for e in events]


async def test_a_put_that_changes_nothing_publishes_nothing(marketing, consume_all) -> None:
    user = await make_user(marketing.db, marketing.brand)
    first = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"newsletter": False}
    )
    again = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"newsletter": False}
    )
    defaults = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"marketing_emails": True}
    )
    assert first.status_code == again.status_code == defaults.status_code == 200
    assert len(await changes_of(marketing.db, marketing.brand, user)) == 1
    # a later, distinct change arrives after exactly one earlier one: nothing was published in between
    await marketing.client.put(URL.format(user), headers=marketing.brand.auth, json={"newsletter": True})
    key = f"{marketing.brand.brand_id}:{user}".encode()
    records = await consume_all(marketing.topic, 2, where=lambda r: r.key == key, timeout=20)
    assert [envelope_of(r)["data"]["newsletter"] for r in records] == [False, True]
    extra = await consume_all(marketing.topic, where=lambda r: r.key == key)
    assert len(extra) == 2


async def test_unsubscribing_through_the_api_stamps_the_time_and_resubscribing_clears_it(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    out = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"unsubscribed": True}
    )
    assert out.json()["unsubscribed"] is True and out.json()["unsubscribed_at"] is not None
    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert stored["unsubscribed"] is True and stored["unsubscribed_at"] is not None
    back = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"unsubscribed": False}
    )
    assert back.json()["unsubscribed"] is False and back.json()["unsubscribed_at"] is None
    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert stored["unsubscribed"] is False and stored["unsubscribed_at"] is None


async def test_a_put_for_a_new_user_creates_their_preferences_with_the_defaults(marketing) -> None:
    response = await marketing.client.put(
        URL.format("signup-user-1"), headers=marketing.brand.auth, json={"email": "new@example.com"}
    )
    assert response.status_code == 200
    assert {k: response.json()[k] for k in DEFAULTS} == DEFAULTS
    stored = await stored_preferences(marketing.db, marketing.brand, "signup-user-1")
    assert stored["email"] == "new@example.com"
    assert (
        await marketing.client.get(URL.format("signup-user-1"), headers=marketing.brand.auth)
    ).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"", 400, "body"),
        (b"[]", 422, "body"),
        (b'{"newsletter": "false"}', 422, "newsletter"),
        (b'{"newsletter": 0}', 422, "newsletter"),
        (b'{"sms_opt_in": true}', 422, "sms_opt_in"),
        (b'{"email": "not-an-email"}', 422, "email"),
        (b'{"email": "a\\u0000b@c.d"}', 422, "email"),  # a NUL: Postgres cannot store it (was a 503)
        (b'{"email": "ab@c.d\\u001b"}', 422, "email"),  # a control character
        (orjson.dumps({"email": "a@b.c" + "x" * 100_000}), 413, "body"),
    ],
)
async def test_bad_bodies_are_problem_json_and_change_nothing(marketing, body, status, field) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.put(
        URL.format(user), headers={**marketing.brand.auth, "Content-Type": "application/json"}, content=body
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == field
    assert await stored_preferences(marketing.db, marketing.brand, user) is None
    assert await changes_of(marketing.db, marketing.brand, user) == []


async def test_without_a_valid_key_nothing_is_read_or_changed(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    for headers in ({}, {"Authorization": "Bearer swk_wrong"}, {"Authorization": "Basic !!"}):
        put = await marketing.client.put(URL.format(user), headers=headers, json={"unsubscribed": True})
        get = await marketing.client.get(URL.format(user), headers=headers)
        assert put.status_code == get.status_code == 401
    assert await stored_preferences(marketing.db, marketing.brand, user) is None


async def test_every_change_reaches_kafka_with_the_id_the_audit_row_holds(marketing, consume_all) -> None:
    users = [await make_user(marketing.db, marketing.brand) for _ in range(5)]
    for index, user in enumerate(users):
        await marketing.client.put(URL.format(user), headers=marketing.brand.auth, json={"newsletter": False})
        if index % 2:
            await marketing.client.put(
                URL.format(user), headers=marketing.brand.auth, json={"unsubscribed": True}
            )
    expected = set()
    for user in users:
        expected |= {a["envelope"]["event_id"] for a in await changes_of(marketing.db, marketing.brand, user)}
    assert len(expected) == 7
    keys = {f"{marketing.brand.brand_id}:{u}".encode() for u in users}
    records = await consume_all(marketing.topic, 7, where=lambda r: r.key in keys, timeout=20)
    assert {envelope_of(r)["event_id"] for r in records} == expected

    async def all_published() -> bool:
        rows = [a for u in users for a in await changes_of(marketing.db, marketing.brand, u)]
        return all(a["published_at"] is not None for a in rows)

    assert await eventually(all_published)


SEED_EXAMPLE = (
    Path(__file__).parents[2] / "fixtures" / "seed_examples" / "004_3_email_preferences_table_schema.json"
)


async def test_seed_004s_example_row_can_be_put_as_it_is(marketing) -> None:
    example = orjson.loads(SEED_EXAMPLE.read_bytes())
    example["newsletter"] = False
    response = await marketing.client.put(URL.format("user_123"), headers=marketing.brand.auth, json=example)
    assert response.status_code == 200
    body = response.json()
    assert body["email"] == "customer@example.com"
    assert {k: body[k] for k in DEFAULTS} == {**DEFAULTS, "newsletter": False}
    # the read-only fields changed nothing: not the token, not the timestamps
    assert body["unsubscribe_token"] != "token_abc123"
    assert body["created_at"] != "2025-01-01T00:00:00Z"
    stored = await stored_preferences(marketing.db, marketing.brand, "user_123")
    assert stored["unsubscribe_token"] is None and stored["newsletter"] is False


async def test_a_get_answer_put_back_changes_nothing(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    await marketing.client.put(URL.format(user), headers=marketing.brand.auth, json={"newsletter": False})
    answer = (await marketing.client.get(URL.format(user), headers=marketing.brand.auth)).json()
    again = await marketing.client.put(URL.format(user), headers=marketing.brand.auth, json=answer)
    assert again.status_code == 200
    assert len(await changes_of(marketing.db, marketing.brand, user)) == 1


async def test_a_body_naming_another_user_is_refused(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.put(
        URL.format(user), headers=marketing.brand.auth, json={"user_id": "someone-else", "newsletter": False}
    )
    assert response.status_code == 422 and response.json()["field"] == "user_id"
    assert await stored_preferences(marketing.db, marketing.brand, user) is None

"""The unsubscribe and preference pages: RFC 8058 one click, GETs that change nothing, bad tokens."""

from __future__ import annotations

import re
import time

import pytest
from synergy_marketing.tokens import TokenSigner

from tests.integration.marketing_preferences.harness import (
    DAY,
    PREVIOUS_SECRET,
    changes_of,
    envelope_of,
    make_user,
    stored_preferences,
    token,
)

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def nonce_of(html: str) -> str:
    match = re.search(r'name="nonce" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


async def test_one_click_form_encoded_unsubscribes_answers_200_and_never_redirects(
    marketing, consume_all
) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.post(
        f"/unsubscribe?token={token('unsubscribe', marketing.brand, user)}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "You are unsubscribed" in response.text
    assert "set-cookie" not in response.headers
    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert stored["unsubscribed"] is True and stored["unsubscribed_at"] is not None
    assert stored["newsletter"] is True  # only unsubscribed changed
    key = f"{marketing.brand.brand_id}:{user}".encode()
    [record] = await consume_all(marketing.topic, 1, where=lambda r: r.key == key, timeout=20)
    event = envelope_of(record)
    assert event["name"] == "email_preferences_changed"
    assert event["data"]["unsubscribed"] is True
    assert [c["source"] for c in await changes_of(marketing.db, marketing.brand, user)] == ["one_click"]


async def test_one_click_multipart_unsubscribes_too(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.post(
        f"/unsubscribe?token={token('unsubscribe', marketing.brand, user)}",
        files={"List-Unsubscribe": (None, "One-Click")},
    )
    assert response.status_code == 200
    assert "location" not in response.headers
    assert (await stored_preferences(marketing.db, marketing.brand, user))["unsubscribed"] is True


async def test_a_second_one_click_is_still_200_and_records_no_second_change(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    url = f"/unsubscribe?token={token('unsubscribe', marketing.brand, user)}"
    first = await marketing.client.post(url, data=ONE_CLICK)
    second = await marketing.client.post(url, data=ONE_CLICK)
    assert first.status_code == second.status_code == 200
    assert len(await changes_of(marketing.db, marketing.brand, user)) == 1


async def test_get_unsubscribe_shows_a_form_that_posts_and_changes_nothing(marketing, consume_all) -> None:
    user = await make_user(marketing.db, marketing.brand)
    tok = token("unsubscribe", marketing.brand, user)
    for _ in range(3):  # a scanner following the link, several times
        response = await marketing.client.get(f"/unsubscribe?token={tok}")
        assert response.status_code == 200
    assert '<form method="post" action="/unsubscribe?token=' in response.text
    assert 'name="List-Unsubscribe" value="One-Click"' in response.text
    assert await stored_preferences(marketing.db, marketing.brand, user) is None
    assert await changes_of(marketing.db, marketing.brand, user) == []
    key = f"{marketing.brand.brand_id}:{user}".encode()
    assert await consume_all(marketing.topic, where=lambda r: r.key == key) == []
    # HEAD, too, changes nothing
    await marketing.client.head(f"/unsubscribe?token={tok}")
    await marketing.client.get(f"/preferences?token={token('preferences', marketing.brand, user)}")
    assert await stored_preferences(marketing.db, marketing.brand, user) is None


def tampered(tok: str) -> str:
    payload, mac = tok.split(".")
    return payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]


def bad_tokens(brand_id: str, user: str) -> dict[str, tuple[str, int]]:
    good = token("unsubscribe", brand_id, user)
    return {
        "tampered": (tampered(good), 403),
        "foreign secret": (TokenSigner(["someone-else-0123456789"]).sign("unsubscribe", brand_id, user), 403),
        "expired": (token("unsubscribe", brand_id, user, issued_at=time.time() - 61 * DAY), 410),
        "malformed": ("not-a-token", 400),
        "missing": ("", 400),
    }


@pytest.mark.parametrize("kind", ["tampered", "foreign secret", "expired", "malformed", "missing"])
async def test_a_bad_token_gets_a_4xx_page_on_every_page_and_changes_nothing(marketing, kind) -> None:
    user = await make_user(marketing.db, marketing.brand)
    bad, status = bad_tokens(marketing.brand.brand_id, user)[kind]
    answers = [
        await marketing.client.post(f"/unsubscribe?token={bad}", data=ONE_CLICK),
        await marketing.client.get(f"/unsubscribe?token={bad}"),
        await marketing.client.get(f"/preferences?token={bad}"),
        await marketing.client.post(f"/preferences?token={bad}", data={"nonce": "x", "newsletter": "on"}),
    ]
    for answer in answers:
        assert answer.status_code == status, (kind, answer.request.method, answer.request.url)
        assert answer.headers["content-type"].startswith("text/html")
        assert "Nothing was changed" in answer.text or "expired" in answer.text
        assert "location" not in answer.headers
    assert await stored_preferences(marketing.db, marketing.brand, user) is None
    assert await changes_of(marketing.db, marketing.brand, user) == []


async def test_a_token_signed_with_the_previous_secret_still_works_during_a_rotation(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    old = TokenSigner([PREVIOUS_SECRET]).sign("unsubscribe", marketing.brand.brand_id, user)
    response = await marketing.client.post(f"/unsubscribe?token={old}", data=ONE_CLICK)
    assert response.status_code == 200
    assert (await stored_preferences(marketing.db, marketing.brand, user))["unsubscribed"] is True


async def test_a_token_29_days_old_still_unsubscribes(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    old = token("unsubscribe", marketing.brand, user, issued_at=time.time() - 29 * DAY)
    assert (await marketing.client.post(f"/unsubscribe?token={old}", data=ONE_CLICK)).status_code == 200
    assert (await stored_preferences(marketing.db, marketing.brand, user))["unsubscribed"] is True


async def test_a_token_for_one_user_never_touches_another(marketing) -> None:
    alice = await make_user(marketing.db, marketing.brand)
    bob = await make_user(marketing.db, marketing.brand)
    await marketing.client.post(
        f"/unsubscribe?token={token('unsubscribe', marketing.brand, alice)}", data=ONE_CLICK
    )
    assert await stored_preferences(marketing.db, marketing.brand, bob) is None
    # the same user id in another brand is another person
    assert await stored_preferences(marketing.db, marketing.other_brand, alice) is None


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"", "application/x-www-form-urlencoded", 400),
        (b"List-Unsubscribe=Yes", "application/x-www-form-urlencoded", 400),
        (b"foo=bar", "application/x-www-form-urlencoded", 400),
        (b'{"List-Unsubscribe": "One-Click"}', "application/json", 415),
        (b"List-Unsubscribe=One-Click", "text/plain", 415),
        (b"--broken\r\nnot multipart", "multipart/form-data; boundary=xyz", 400),
        (b"List-Unsubscribe=One-Click&pad=" + b"x" * 20_000, "application/x-www-form-urlencoded", 413),
        (b"\xff\xfe=\xff", "application/x-www-form-urlencoded", 400),
    ],
)
async def test_a_one_click_post_without_the_one_click_body_changes_nothing(
    marketing, content, content_type, status
) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.post(
        f"/unsubscribe?token={token('unsubscribe', marketing.brand, user)}",
        content=content,
        headers={"Content-Type": content_type},
    )
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert await stored_preferences(marketing.db, marketing.brand, user) is None


async def test_the_preference_page_shows_the_boxes_and_its_form_saves_them(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand, email="pat@example.com")
    url = f"/preferences?token={token('preferences', marketing.brand, user)}"
    page = await marketing.client.get(url)
    assert page.status_code == 200
    for name in (
        "marketing_emails",
        "abandoned_cart_emails",
        "price_drop_alerts",
        "back_in_stock_alerts",
        "product_recommendations",
        "newsletter",
        "unsubscribed",
    ):
        assert f'name="{name}"' in page.text
    assert "pat@example.com" in page.text
    assert "<script" not in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "form-action 'self'" in csp
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
    saved = await marketing.client.post(
        url,
        data={"nonce": nonce_of(page.text), "marketing_emails": "on", "newsletter": "on"},
        headers={"Origin": "http://marketing.test"},
    )
    assert saved.status_code == 303
    assert saved.headers["location"].endswith("&saved=1")
    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert (stored["marketing_emails"], stored["newsletter"], stored["price_drop_alerts"]) == (
        True,
        True,
        False,
    )
    assert (stored["abandoned_cart_emails"], stored["unsubscribed"]) == (False, False)
    after = await marketing.client.get(saved.headers["location"])
    assert "Your preferences have been saved" in after.text
    assert re.search(r'name="newsletter"[^>]*\s+checked', after.text)
    assert not re.search(r'name="price_drop_alerts"[^>]*\s+checked', after.text)
    assert [c["source"] for c in await changes_of(marketing.db, marketing.brand, user)] == [
        "preference_centre"
    ]


async def test_the_preference_form_is_refused_without_its_nonce_or_from_another_site(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    url = f"/preferences?token={token('preferences', marketing.brand, user)}"
    page = await marketing.client.get(url)
    other_user_page = await marketing.client.get(
        f"/preferences?token={token('preferences', marketing.brand, 'someone-else')}"
    )
    attempts = [
        ({"newsletter": "on"}, {}),
        ({"nonce": "abc.123.def", "newsletter": "on"}, {}),
        ({"nonce": nonce_of(other_user_page.text), "newsletter": "on"}, {}),
        ({"nonce": nonce_of(page.text), "newsletter": "on"}, {"Origin": "https://evil.example.net"}),
        ({"nonce": nonce_of(page.text), "newsletter": "on"}, {"Sec-Fetch-Site": "cross-site"}),
    ]
    for data, headers in attempts:
        response = await marketing.client.post(url, data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
        assert "Nothing was changed" in response.text
    assert await stored_preferences(marketing.db, marketing.brand, user) is None


async def test_an_unsubscribe_token_cannot_open_the_preference_centre(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.get(f"/preferences?token={token('unsubscribe', marketing.brand, user)}")
    assert response.status_code == 403


async def test_resubscribing_in_the_preference_centre_clears_unsubscribed(marketing, consume_all) -> None:
    user = await make_user(marketing.db, marketing.brand)
    await marketing.client.post(
        f"/unsubscribe?token={token('unsubscribe', marketing.brand, user)}", data=ONE_CLICK
    )
    url = f"/preferences?token={token('preferences', marketing.brand, user)}"
    page = await marketing.client.get(url)
    assert re.search(r'name="unsubscribed"[^>]*\s+checked', page.text)
    await marketing.client.post(
        url, data={"nonce": nonce_of(page.text), "marketing_emails": "on", "newsletter": "on"}
    )
    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert stored["unsubscribed"] is False and stored["unsubscribed_at"] is None
    key = f"{marketing.brand.brand_id}:{user}".encode()
    records = await consume_all(marketing.topic, 2, where=lambda r: r.key == key, timeout=20)
    assert [envelope_of(r)["data"]["unsubscribed"] for r in records] == [True, False]

"""Unsubscribe and preference tokens: signed, bound to brand and user, valid >= 30 days, rotatable."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
from synergy_marketing.tokens import (
    LIST_UNSUBSCRIBE_POST,
    TokenRejected,
    TokenSecretMissing,
    TokenSigner,
    list_unsubscribe,
    preferences_url,
    signer_from_settings,
    unsubscribe_url,
)

NOW = 1_780_000_000  # a fixed clock
DAY = 86400


def signer(*secrets: str | None, max_age: float = 60 * DAY) -> TokenSigner:
    return TokenSigner(list(secrets) or ["secret-one-0123456789"], max_age)


def test_a_token_round_trips_its_brand_user_and_purpose() -> None:
    token = signer().sign("unsubscribe", 7, "user-123", issued_at=NOW)
    claims = signer().verify(token, now=NOW + 10)
    assert (claims.purpose, claims.brand_id, claims.user_id, claims.issued_at, claims.key_index) == (
        "unsubscribe",
        "7",
        "user-123",
        NOW,
        0,
    )


def test_a_token_is_base64url_without_padding_and_carries_no_plain_user_id() -> None:
    token = signer().sign("preferences", "7", "alice@example.com", issued_at=NOW)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert "=" not in token and "alice" not in token


def test_the_signature_is_hmac_sha256_over_the_payload() -> None:
    token = signer().sign("unsubscribe", "7", "u1", issued_at=NOW)
    mac = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert len(mac) == 32


@pytest.mark.parametrize("position", [0, 5, 20, -3, -1])
def test_a_tampered_token_is_refused(position: int) -> None:
    token = signer().sign("unsubscribe", "7", "user-123", issued_at=NOW)
    chars = list(token)
    chars[position] = "A" if chars[position] != "A" else "B"
    with pytest.raises(TokenRejected) as rejected:
        signer().verify("".join(chars), now=NOW)
    assert rejected.value.reason in {"bad_signature", "malformed"}


def test_a_payload_swapped_to_another_user_is_refused() -> None:
    mine = signer().sign("unsubscribe", "7", "user-123", issued_at=NOW)
    theirs = signer().sign("unsubscribe", "7", "user-999", issued_at=NOW)
    forged = theirs.split(".")[0] + "." + mine.split(".")[1]
    with pytest.raises(TokenRejected) as rejected:
        signer().verify(forged, now=NOW)
    assert rejected.value.reason == "bad_signature"


def test_a_token_signed_with_another_secret_is_refused() -> None:
    foreign = TokenSigner(["someone-elses-secret-xyz"]).sign("unsubscribe", "7", "u1", issued_at=NOW)
    with pytest.raises(TokenRejected) as rejected:
        signer().verify(foreign, now=NOW)
    assert rejected.value.reason == "bad_signature"


def test_a_token_is_valid_for_at_least_thirty_days_even_if_configured_shorter() -> None:
    short = TokenSigner(["secret-one-0123456789"], max_age_seconds=60)
    token = short.sign("unsubscribe", "7", "u1", issued_at=NOW)
    assert short.verify(token, now=NOW + 30 * DAY).user_id == "u1"
    with pytest.raises(TokenRejected) as rejected:
        short.verify(token, now=NOW + 30 * DAY + 1)
    assert rejected.value.reason == "expired"


def test_the_default_lifetime_is_sixty_days() -> None:
    settings = SimpleNamespace(marketing_token_secret="secret-one-0123456789")
    default = signer_from_settings(settings)
    token = default.sign("unsubscribe", "7", "u1", issued_at=NOW)
    assert default.verify(token, now=NOW + 60 * DAY).user_id == "u1"
    with pytest.raises(TokenRejected):
        default.verify(token, now=NOW + 60 * DAY + 1)


def test_the_lifetime_is_configurable_as_a_duration() -> None:
    settings = SimpleNamespace(marketing_token_secret="secret-one-0123456789", marketing_token_max_age="90d")
    token = signer_from_settings(settings).sign("unsubscribe", "7", "u1", issued_at=NOW)
    assert signer_from_settings(settings).verify(token, now=NOW + 89 * DAY).user_id == "u1"


def test_a_token_from_the_future_is_refused() -> None:
    token = signer().sign("unsubscribe", "7", "u1", issued_at=NOW + 3600)
    with pytest.raises(TokenRejected) as rejected:
        signer().verify(token, now=NOW)
    assert rejected.value.reason == "expired"


def test_during_a_rotation_the_previous_secret_still_verifies_and_new_tokens_use_the_new_one() -> None:
    old = TokenSigner(["old-secret-0123456789"])
    rotated = TokenSigner(["new-secret-0123456789", "old-secret-0123456789"])
    old_token = old.sign("preferences", "7", "u1", issued_at=NOW)
    assert rotated.verify(old_token, now=NOW).key_index == 1
    new_token = rotated.sign("preferences", "7", "u1", issued_at=NOW)
    assert TokenSigner(["new-secret-0123456789"]).verify(new_token, now=NOW).key_index == 0
    with pytest.raises(TokenRejected):
        old.verify(new_token, now=NOW)


def test_a_purpose_not_accepted_is_refused() -> None:
    token = signer().sign("unsubscribe", "7", "u1", issued_at=NOW)
    with pytest.raises(TokenRejected) as rejected:
        signer().verify(token, accept=("preferences",), now=NOW)
    assert rejected.value.reason == "wrong_purpose"


@pytest.mark.parametrize(
    "junk", [None, "", ".", "a.b.c", "!!!.???", "x" * 5000, "YWJj.YWJj", "\x00.\x00", "é.é"]
)
def test_junk_is_malformed_or_badly_signed_never_an_exception_of_another_kind(junk: str | None) -> None:
    with pytest.raises(TokenRejected) as rejected:
        signer().verify(junk, now=NOW)
    assert rejected.value.reason in {"malformed", "bad_signature"}


def test_without_a_secret_nothing_can_be_signed() -> None:
    with pytest.raises(TokenSecretMissing):
        TokenSigner([None, ""])


def test_links_point_at_the_public_url_with_a_token_for_the_right_page() -> None:
    settings = SimpleNamespace(
        marketing_token_secret="secret-one-0123456789", marketing_public_url="https://mk.example.com/"
    )
    unsub = unsubscribe_url(settings, 7, "u1", issued_at=NOW)
    prefs = preferences_url(settings, 7, "u1", issued_at=NOW)
    assert unsub.startswith("https://mk.example.com/unsubscribe?token=")
    assert prefs.startswith("https://mk.example.com/preferences?token=")
    checker = TokenSigner(["secret-one-0123456789"])
    assert checker.verify(unsub.split("token=")[1], now=NOW).purpose == "unsubscribe"
    assert checker.verify(prefs.split("token=")[1], now=NOW).purpose == "preferences"


def test_list_unsubscribe_has_the_https_link_and_a_mailto_only_when_configured() -> None:
    settings = SimpleNamespace(
        marketing_token_secret="secret-one-0123456789", marketing_public_url="https://mk.example.com"
    )
    header = list_unsubscribe(settings, 7, "u1", issued_at=NOW)
    assert header == f"<{unsubscribe_url(settings, 7, 'u1', issued_at=NOW)}>"
    settings.marketing_unsubscribe_mailto = "unsubscribe@mk.example.com"
    with_mailto = list_unsubscribe(settings, 7, "u1", issued_at=NOW)
    first, second = with_mailto.split(", ")
    assert first.startswith("<https://mk.example.com/unsubscribe?token=")
    assert second.startswith("<mailto:unsubscribe@mk.example.com?subject=unsubscribe%20")
    assert LIST_UNSUBSCRIBE_POST == "List-Unsubscribe=One-Click"

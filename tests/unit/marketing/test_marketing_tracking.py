"""Click redirects only to URLs the message carried; the pixel is a 1x1 GIF."""

from __future__ import annotations

from synergy_marketing.tracking import PIXEL_GIF, plausible_queue_id, redirect_target_acceptable


def test_only_absolute_http_urls_of_sane_length_are_redirect_targets() -> None:
    assert redirect_target_acceptable("https://shop.example.com/checkout")
    assert redirect_target_acceptable("HTTP://shop.example.com/")
    for target in [
        "javascript:alert(1)",
        "//evil.example.net",
        "/relative",
        "",
        None,
        "https://x/" + "a" * 5000,
    ]:
        assert not redirect_target_acceptable(target), target


def test_the_pixel_is_a_42_byte_1x1_gif() -> None:
    assert PIXEL_GIF[:6] == b"GIF89a"
    assert len(PIXEL_GIF) == 42
    assert PIXEL_GIF[6:10] == b"\x01\x00\x01\x00"


def test_queue_ids_are_checked_before_any_lookup() -> None:
    assert plausible_queue_id("queue_20250115_abc123")
    assert not plausible_queue_id("")
    assert not plausible_queue_id("x" * 65)
    assert not plausible_queue_id("a\x00b")

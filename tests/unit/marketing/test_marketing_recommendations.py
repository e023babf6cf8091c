"""Seed 004's recommendations: top viewed category, then its most popular products."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from synergy_marketing.recommendations import CategoryProduct, ViewedCategory, rank_products, top_category

T = datetime(2026, 1, 1, tzinfo=UTC)
LATER = datetime(2026, 1, 2, tzinfo=UTC)


def test_the_most_viewed_category_wins() -> None:
    assert top_category([ViewedCategory("Books", 3, T), ViewedCategory("Music", 5, T)]) == "Music"


def test_a_tie_goes_to_the_category_viewed_last() -> None:
    assert top_category([ViewedCategory("Books", 4, LATER), ViewedCategory("Music", 4, T)]) == "Books"


def test_no_views_means_no_category() -> None:
    assert top_category([]) is None
    assert top_category([ViewedCategory("", 9, T)]) is None


def product(pid: str, purchases: int, viewers: int, views: int) -> CategoryProduct:
    return CategoryProduct(pid, f"name {pid}", Decimal("19.99"), None, purchases, viewers, views)


def test_products_rank_by_purchases_then_viewers_then_views_and_stop_at_six() -> None:
    ranked = rank_products(
        [
            product("a", 0, 9, 50),
            product("b", 2, 1, 1),
            product("c", 0, 9, 60),
            product("d", 1, 1, 1),
            product("e", 0, 1, 1),
            product("f", 0, 2, 2),
            product("g", 0, 0, 0),
            product("h", 0, 0, 0),
        ]
    )
    assert [p.product_id for p in ranked] == ["b", "d", "c", "a", "f", "e"]

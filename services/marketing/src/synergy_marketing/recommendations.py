"""Seed 004's recommendations: the user's most viewed category, then that category's popular products.
Pure: the rows come from product_views, loaded by the caller."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

MAX_RECOMMENDATIONS = 6  # seed 004: Limit=6


@dataclass(frozen=True)
class ViewedCategory:
    category: str
    views: int
    last_viewed_at: datetime


@dataclass(frozen=True)
class CategoryProduct:
    product_id: str
    product_name: str | None
    product_price: Decimal | None
    image_url: str | None
    purchases: int  # people who bought it after viewing
    viewers: int  # people who viewed it
    views: int


def top_category(viewed: Iterable[ViewedCategory]) -> str | None:
    """The category the user viewed most; a tie goes to the one viewed last. None without any."""
    best: ViewedCategory | None = None
    for row in viewed:
        if not row.category or row.views <= 0:
            continue
        if best is None or (row.views, row.last_viewed_at) > (best.views, best.last_viewed_at):
            best = row
    return best.category if best else None


def rank_products(
    candidates: Iterable[CategoryProduct], limit: int = MAX_RECOMMENDATIONS
) -> list[CategoryProduct]:
    """Most popular first (seed 004 orders by sales): purchases, then viewers, then views, then id."""
    ordered = sorted(candidates, key=lambda p: (-p.purchases, -p.viewers, -p.views, p.product_id))
    return ordered[:limit]

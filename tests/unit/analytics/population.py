"""A constructed population with known answers, shared by the pure KPI tests and the SQL tests.

Day 0 is Monday 2026-10-05 00:00 UTC; the range is [day 0, day 3). Funnel: user_session_started ->
product_scanned -> order_completed. The answers are worked out by hand in the tests, not here.

    u1  session d0 00:00, scan +1h, points_awarded (engine) +1h+1s, order d2, scan d3, scan d8
    u2  session d0 00:00, scan d1, order d10 (outside a 7-day window), scan d14 (= entry + 14 d)
    u3  session d1 00:00, product_viewed +1h (breaks strict order), scan +2h, scan +5h, scan d8 (= entry + 7 d)
    u4  session d2 00:00, nothing else
    u5  scan d0 only (never entered)
    u6  session d0 - 1h (before the range), scan d0
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

DAY0 = datetime(2026, 10, 5, tzinfo=UTC)
SINCE = DAY0
UNTIL = DAY0 + timedelta(days=3)
STEPS = ("user_session_started", "product_scanned", "order_completed")

D, H, S = timedelta(days=1), timedelta(hours=1), timedelta(seconds=1)

TIMELINE: list[tuple[str, str, timedelta]] = [
    ("u1", "user_session_started", 0 * D),
    ("u1", "product_scanned", 1 * H),
    ("u1", "points_awarded", 1 * H + 1 * S),
    ("u1", "order_completed", 2 * D),
    ("u1", "product_scanned", 3 * D),
    ("u1", "product_scanned", 8 * D),
    ("u2", "user_session_started", 0 * D),
    ("u2", "product_scanned", 1 * D),
    ("u2", "order_completed", 10 * D),
    ("u2", "product_scanned", 14 * D),
    ("u3", "user_session_started", 1 * D),
    ("u3", "product_viewed", 1 * D + 1 * H),
    ("u3", "product_scanned", 1 * D + 2 * H),
    ("u3", "product_scanned", 1 * D + 5 * H),
    ("u3", "product_scanned", 8 * D),
    ("u4", "user_session_started", 2 * D),
    ("u5", "product_scanned", 0 * D),
    ("u6", "user_session_started", -1 * H),
    ("u6", "product_scanned", 0 * D),
]


def envelopes(brand_id: str, prefix: str = "") -> list[dict[str, Any]]:
    """The timeline as engine envelopes of one brand; points_awarded comes from achievements."""
    out = []
    for index, (user, name, offset) in enumerate(TIMELINE):
        at = DAY0 + offset
        engine = name == "points_awarded"
        out.append({
            "event_id": f"{prefix}pop-{brand_id}-{index:03d}",
            "type": "track",
            "name": name,
            "brand_id": brand_id,
            "identifiers": {"id": f"{prefix}{user}"},
            "data": {"points": 10} if engine else {"event_context": {}},
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "received_at": at.isoformat().replace("+00:00", "Z"),
            "schema_version": 1,
            "source": "achievements" if engine else "ingest",
            "correlation_id": f"corr-{index}",
        })
    return out

"""Open and click tracking checks (seed 004). Pure: no I/O.

A click is redirected only to an absolute http(s) URL that the queue item's own message carried, compared
exactly: anything else would make the route an open redirect.
"""

from __future__ import annotations

import base64

# The classic transparent 1x1 GIF (42 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
MAX_QUEUE_ID_CHARS = 64
MAX_REDIRECT_CHARS = 4096
_SCHEMES = ("https://", "http://")


def redirect_target_acceptable(target: str | None) -> bool:
    """An absolute http(s) URL of sane length; whether the message carried it is checked in Postgres
    (queue_store.sent_item_carries_url)."""
    return (
        bool(target)
        and len(target or "") <= MAX_REDIRECT_CHARS
        and (target or "").lower().startswith(_SCHEMES)
    )


def plausible_queue_id(queue_id: str | None) -> bool:
    return bool(queue_id) and len(queue_id or "") <= MAX_QUEUE_ID_CHARS and (queue_id or "").isprintable()

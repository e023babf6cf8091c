"""Hypothesis-generated malformed bodies against every ingest route: never a 5xx."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import RunningIngest

pytestmark = pytest.mark.integration

ROUTES = [
    "/v1/events",
    "/v1/events/batch",
    "/v1/track",
    "/v1/identify",
    "/v1/page",
    "/v1/screen",
    "/v1/batch",
]
NAMES = st.sampled_from(["product_scanned", "wishlist_added", "product_viewed", "rank_changed", "nope", ""])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | NAMES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "name": NAMES | json_values,
        "type": st.sampled_from(["track", "identify", "page", "screen", "group"]) | json_values,
        "identifiers": st.fixed_dictionaries({}, optional={"id": json_values, "anonymous_id": json_values})
        | json_values,
        "data": st.dictionaries(
            st.sampled_from(["product_snapshot", "user_snapshot", "event_context", "x"]),
            json_values,
            max_size=3,
        )
        | json_values,
        "timestamp": st.sampled_from(["2024-05-22T18:35:12Z", "2024-05-22T18:35:12", "yesterday"])
        | json_values,
        "event_id": json_values,
        "userId": json_values,
        "anonymousId": json_values,
        "event": NAMES | json_values,
        "properties": json_values,
        "traits": json_values,
        "context": json_values,
        "messageId": json_values,
    },
)
bodies = (
    event_like.map(orjson.dumps)
    | st.lists(event_like, max_size=3).map(lambda batch: orjson.dumps({"batch": batch}))
    | json_values.map(orjson.dumps)
    | st.binary(max_size=200)
)


async def test_no_malformed_body_gets_a_5xx(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    seen_statuses: set[int] = set()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        route=st.sampled_from(ROUTES),
        body=bodies,
        content_type=st.sampled_from(["application/json", "application/json", "text/plain", "text/html"]),
    )
    def check(route: str, body: bytes, content_type: str) -> None:
        response = client.post(route, content=body, headers={"Content-Type": content_type})
        seen_statuses.add(response.status_code)
        assert response.status_code < 500, (route, body, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")

    with httpx.Client(
        base_url=ingest.url, timeout=30, headers={"Authorization": f"Bearer {brand.write_key}"}
    ) as client:
        await asyncio.to_thread(check)
    assert {400, 422} <= seen_statuses

"""Every webhook route, correctly signed, so the parser (not the signature check) meets every body:
JSON that is not an object is a 422 naming the body; webhook-shaped bodies with wrong nested types are
never a 5xx. Runs against a served insights (uvicorn) over real Postgres and Kafka."""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synergy_common.brands import CredentialCipher, set_webhook_signing_key
from synergy_common.db import create_pool
from synergy_insights.app import create_app

from tests.integration.insights.insights_harness import (
    SIGNING_KEY,
    Brand,
    insights_settings,
    make_brand,
    new_topic,
    signed,
)
from tests.support import free_port

pytestmark = pytest.mark.integration

ENCRYPTION_KEY = CredentialCipher.generate_key()
OWN_KEY = f"bodies-own-{secrets.token_hex(6)}"


@dataclass
class Route:
    path: str
    key: str


@dataclass
class Served:
    url: str
    routes: list[Route]


def run_async(coroutine: Any) -> Any:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _brands(database_url: str) -> tuple[Brand, Brand]:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        keyless = await make_brand(pool, "Bodies Global")
        keyed = await make_brand(pool, "Bodies Own")
        await set_webhook_signing_key(pool, keyed.slug, OWN_KEY, CredentialCipher(ENCRYPTION_KEY))
        return keyless, keyed
    finally:
        await pool.close()


async def _give_up_pending(database_url: str, brands: tuple[Brand, Brand]) -> None:
    connection = await asyncpg.connect(database_url)
    try:  # generated users never appear: stop the retry loops from waiting for them
        await connection.execute(
            """UPDATE customer_io_webhook_log SET processed_successfully = false,
               error_message = 'hypothesis test data', next_attempt_at = NULL
               WHERE brand_id = ANY($1::bigint[]) AND processed_successfully IS NULL""",
            [brand.pk for brand in brands],
        )
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def served(database_url: str, kafka_bootstrap: str) -> Iterator[Served]:
    keyless, keyed = run_async(_brands(database_url))
    app = create_app(
        insights_settings(
            database_url,
            kafka_bootstrap,
            insights_default_brand_id=keyless.brand_id,
            synergy_encryption_key=ENCRYPTION_KEY,
        ),
        insights_topic=run_async(new_topic(kafka_bootstrap)),
    )
    webhook_paths = [
        path
        for path, operations in app.openapi()["paths"].items()
        if "webhooks" in operations.get("post", {}).get("tags", ())
    ]
    assert len(webhook_paths) == 4, webhook_paths
    routes = []
    for path in webhook_paths:
        if "{brand}" in path:  # each brand route both for a brand on the global key and one with its own
            routes.append(Route(path.replace("{brand}", keyless.slug), SIGNING_KEY))
            routes.append(Route(path.replace("{brand}", keyed.brand_id), OWN_KEY))
        else:
            routes.append(Route(path, SIGNING_KEY))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield Served(f"http://127.0.0.1:{port}", routes)
    server.should_exit = True
    thread.join(15)
    run_async(_give_up_pending(database_url, (keyless, keyed)))


def post_signed(served: Served, route: Route, body: Any) -> httpx.Response:
    raw, headers = signed(orjson.dumps(body), key=route.key)
    return httpx.post(served.url + route.path, content=raw, headers=headers, timeout=10)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
not_objects = json_values.filter(lambda value: not isinstance(value, dict))
prediction_names = st.sampled_from(
    ["churn_probability", "engagement_score", "predicted_ltv", "recommended_segment",
     "product_affinity_scores", "free_name"]
)
webhook_shaped = st.one_of(
    st.fixed_dictionaries(
        {"user_id": json_values, "predictions": json_values | st.dictionaries(prediction_names, json_values)},
        optional={"timestamp": json_values, "event_id": json_values, "calculated_at": json_values},
    ),
    st.fixed_dictionaries(
        {
            "event_id": st.text(min_size=1, max_size=30) | json_values,
            "object_type": st.sampled_from(["email", "push", "customer", "webhook", "nope"]) | json_values,
            "metric": st.sampled_from(["opened", "clicked", "unsubscribed"]) | json_values,
            "timestamp": st.integers(min_value=0, max_value=2_000_000_000) | json_values,
        },
        optional={
            "data": json_values
            | st.fixed_dictionaries({}, optional={"identifiers": json_values, "customer_id": json_values}),
        },
    ),
)


@pytest.mark.parametrize("body", [None, 0, 1.5, "a string", [], [{"user_id": "u"}], True])
def test_signed_json_that_is_not_an_object_is_422_naming_the_body_on_every_webhook_route(
    served: Served, body: Any
) -> None:
    for route in served.routes:
        answer = post_signed(served, route, body)
        assert answer.status_code == 422, (route.path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["field"] == "body"
        assert problem["detail"] == f"the body must be a JSON object, not {kind_of(body)}"


@given(body=not_objects)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_any_signed_non_object_json_is_a_422_on_every_webhook_route(served: Served, body: Any) -> None:
    for route in served.routes:
        answer = post_signed(served, route, body)
        assert answer.status_code == 422, (route.path, body, answer.text)
        assert answer.json()["field"] == "body"


@given(body=webhook_shaped)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_signed_webhook_shaped_bodies_with_wrong_nested_types_get_an_answer_never_a_server_error(
    served: Served, body: dict[str, Any]
) -> None:
    for route in served.routes:
        answer = post_signed(served, route, body)
        assert answer.status_code in (200, 202, 401, 422), (route.path, body, answer.text)
        if answer.status_code == 401:  # the very same signed body twice within a second
            assert answer.json()["reason"] == "replayed", answer.text
        if answer.status_code == 422:
            problem = answer.json()
            assert problem["field"] and problem["detail"], problem

"""schemathesis against the served OpenAPI: no generated request, signed or not, gets a 5xx."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from synergy_common.db import create_pool
from synergy_insights.app import create_app

from tests.integration.insights.insights_harness import (
    Brand,
    insights_settings,
    make_brand,
    new_topic,
    signed,
)
from tests.support import free_port

pytestmark = pytest.mark.integration
JSON_TYPES = (dict, list, str, int, float, bool, type(None))


@dataclass
class Served:
    url: str
    brand: Brand



def run_async(coroutine):  # type: ignore[no-untyped-def]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _brand(database_url: str) -> Brand:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        return await make_brand(pool, "Schemathesis")
    finally:
        await pool.close()


async def _give_up_pending(database_url: str, brand: Brand) -> None:
    connection = await asyncpg.connect(database_url)
    try:  # random users never appear: stop the retry loops from waiting for them
        await connection.execute(
            """UPDATE customer_io_webhook_log SET processed_successfully = false,
               error_message = 'schemathesis test data', next_attempt_at = NULL
               WHERE brand_id = $1 AND processed_successfully IS NULL""",
            brand.pk,
        )
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def served(database_url: str, kafka_bootstrap: str) -> Iterator[Served]:
    brand = run_async(_brand(database_url))
    topic = run_async(new_topic(kafka_bootstrap))
    app = create_app(
        insights_settings(database_url, kafka_bootstrap, insights_default_brand_id=brand.brand_id),
        insights_topic=topic,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield Served(f"http://127.0.0.1:{port}", brand)
    server.should_exit = True
    thread.join(15)
    run_async(_give_up_pending(database_url, brand))


def test_no_request_gets_a_server_error(served: Served):
    # schemathesis' pytest plugin does not load under pytest 9, so its strategies are driven directly.
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {
        "/webhooks/customer-io",
        "/api/webhooks/customer-io",
        "/v1/users/{user_id}/insights",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case):  # type: ignore[no-untyped-def]
            if case.path.endswith("/insights"):
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {served.brand.write_key}"}
            case.call_and_validate(base_url=served.url, checks=[not_a_server_error])
            if case.method.upper() == "POST" and isinstance(case.body, JSON_TYPES):
                # the same body (any JSON, null included), correctly signed and posted to a brand that
                # exists, reaches parsing and storage
                raw, headers = signed(json.dumps(case.body).encode())
                path = case.operation.path.replace("{brand}", served.brand.slug)
                answer = requests.post(served.url + path, data=raw, headers=headers, timeout=10)
                assert answer.status_code < 500, answer.text
                if not isinstance(case.body, dict):
                    assert answer.status_code == 422, answer.text

        no_server_error()

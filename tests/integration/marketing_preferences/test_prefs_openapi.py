"""schemathesis against the served OpenAPI and hypothesis bodies: no request gets a 5xx, and a refused
request changes nothing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from synergy_common.db import create_pool
from synergy_marketing.app import create_app
from synergy_marketing.publisher import MarketingPublisher

from tests.integration.marketing_preferences.harness import Brand, make_brand, make_user, settings_for, token
from tests.support import free_port

pytestmark = pytest.mark.integration


@dataclass
class Served:
    url: str
    brand: Brand
    user: str
    database_url: str


def run_async(coroutine):  # type: ignore[no-untyped-def]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _brand_and_user(database_url: str) -> tuple[Brand, str]:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        brand = await make_brand(pool, "Schemathesis")
        return brand, await make_user(pool, brand)
    finally:
        await pool.close()


async def _row_count(database_url: str, sql: str, *args: object) -> int:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        return int(await pool.fetchval(sql, *args))
    finally:
        await pool.close()


@pytest.fixture(scope="module")
async def fresh_database(database_factory) -> str:
    return await database_factory("prefsapi")


@pytest.fixture(scope="module")
async def marketing_topic(topic_factory) -> str:
    return await topic_factory(1, prefix="test.marketing")


@pytest.fixture(scope="module")
def served(fresh_database: str, marketing_topic: str, kafka_bootstrap: str) -> Iterator[Served]:
    brand, user = run_async(_brand_and_user(fresh_database))
    app = create_app(
        settings_for(fresh_database, kafka_bootstrap),
        publisher=MarketingPublisher(kafka_bootstrap, topic=marketing_topic),
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
    yield Served(f"http://127.0.0.1:{port}", brand, user, fresh_database)
    server.should_exit = True
    thread.join(15)


def test_no_generated_request_gets_a_server_error(served: Served) -> None:
    # schemathesis' pytest plugin does not load under pytest 9, so its strategies are driven directly.
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {(operation.method.upper(), operation.path) for operation in operations}
    assert paths >= {
        ("GET", "/v1/users/{user_id}/email-preferences"),
        ("PUT", "/v1/users/{user_id}/email-preferences"),
        ("GET", "/v1/users/{user_id}/recommendations"),
        ("GET", "/preferences"),
        ("POST", "/preferences"),
        ("GET", "/unsubscribe"),
        ("POST", "/unsubscribe"),
        ("GET", "/track/email-open"),
        ("GET", "/track/email-click"),
    }
    valid = {
        "unsubscribe": token("unsubscribe", served.brand, served.user),
        "preferences": token("preferences", served.brand, served.user),
    }
    for operation in operations:

        @given(case=operation.as_strategy(), authorised=st.booleans())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case, authorised):  # type: ignore[no-untyped-def]
            if authorised:
                if case.path.startswith("/v1/"):
                    case.headers = {
                        **(case.headers or {}),
                        "Authorization": f"Bearer {served.brand.write_key}",
                    }
                if case.path in ("/unsubscribe", "/preferences"):
                    case.query = {**(case.query or {}), "token": valid[case.path.strip("/")]}
            case.call_and_validate(base_url=served.url, checks=[not_a_server_error])

        no_server_error()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=25), children, max_size=5)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "newsletter",
        "unsubscribed",
        "marketing_emails",
        "email",
        "price_drop_alerts",
        "List-Unsubscribe",
        "nonce",
        "x",
    ]
)


@given(body=st.dictionaries(FIELDS, JSON, max_size=4) | JSON)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_hypothesis_bodies_on_the_put_are_4xx_or_a_valid_change(served: Served, body) -> None:
    import json

    user = f"hyp-{abs(hash(json.dumps(body, default=str))) % 10**9}"
    url = f"{served.url}/v1/users/{user}/email-preferences"
    answer = requests.put(
        url, data=json.dumps(body), headers={"Authorization": f"Bearer {served.brand.write_key}"}, timeout=10
    )
    assert answer.status_code < 500, answer.text
    if answer.status_code != 200:
        assert answer.headers["content-type"] == "application/problem+json"
        assert (
            run_async(
                _row_count(
                    served.database_url,
                    "SELECT count(*) FROM email_preference_changes WHERE brand_id = $1 AND user_id = $2",
                    served.brand.pk,
                    user,
                )
            )
            == 0
        )
    else:
        assert isinstance(body, dict)
        assert set(body) <= {"newsletter", "unsubscribed", "marketing_emails", "email", "price_drop_alerts"}


@given(
    fields=st.lists(st.tuples(FIELDS | st.text(max_size=10), st.text(max_size=30)), max_size=5),
    raw=st.binary(max_size=200),
    use_raw=st.booleans(),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "multipart/form-data; boundary=abc", "text/plain", ""]
    ),
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_hypothesis_form_bodies_on_the_pages_never_5xx(
    served: Served, fields, raw, use_raw, content_type
) -> None:
    for path, purpose in (("/unsubscribe", "unsubscribe"), ("/preferences", "preferences")):
        url = f"{served.url}{path}?token={token(purpose, served.brand, served.user)}"
        if use_raw:
            answer = requests.post(url, data=raw, headers={"Content-Type": content_type}, timeout=10)
        else:
            answer = requests.post(url, data=fields, timeout=10)
        assert answer.status_code < 500, (path, answer.status_code, answer.text[:300])
        assert answer.headers["content-type"].startswith("text/html")
        if path == "/unsubscribe" and answer.status_code == 200:
            # only the one-click body unsubscribes
            assert not use_raw or b"List-Unsubscribe=One-Click" in raw or b"One-Click" in raw
            assert use_raw or ("List-Unsubscribe", "One-Click") in fields

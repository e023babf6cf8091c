"""Brand isolation of every brand-scoped route of every service, in one place.

A brand's key never reads another brand's data: another brand's user is answered exactly as an
unknown user (404, the same body and headers, no timing difference a test can see); a brand-wide read
without `{user_id}` (KPIs, destination status) shows nothing of the other brand's data.

`SERVICES` lists each service's app factory; `test_every_brand_scoped_route_has_an_isolation_case`
reads each app's OpenAPI and fails on a brand-scoped path (one with `{user_id}`, or under /v1/) that
`ISOLATION_CASES` does not cover, so a new route cannot be forgotten. Adding a service is a factory
and a row in `SERVICES`; adding a route is a row in `ISOLATION_CASES` with a seed: how to give a user
of a brand data that this route shows (it returns a marker string the brand's own answer contains).
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from synergy_achievements.api import create_api
from synergy_achievements.rules import default_rules
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from synergy_insights.app import create_app as create_insights_app

from tests.integration.insights.insights_harness import insights_settings, new_topic, signed

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Infra:
    database_url: str
    kafka_bootstrap: str
    db: asyncpg.Pool


@dataclass(frozen=True)
class Brand:
    brand_id: str
    slug: str
    write_key: str

    @property
    def pk(self) -> int:
        return int(self.brand_id)


AppFactory = Callable[[Infra], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def achievements_app(infra: Infra) -> AsyncIterator[Any]:
    yield create_api(infra.db, lambda brand_id: default_rules(), {})


@asynccontextmanager
async def insights_app(infra: Infra) -> AsyncIterator[Any]:
    settings = insights_settings(infra.database_url, infra.kafka_bootstrap)
    app = create_insights_app(settings, insights_topic=await new_topic(infra.kafka_bootstrap))
    async with app.router.lifespan_context(app):
        yield app


# (service name, app factory). marketing (8002), dispatcher (8005) and analytics (8006) join here.
SERVICES: list[tuple[str, AppFactory]] = [
    ("achievements", achievements_app),
    ("insights", insights_app),
]


@dataclass
class Running:
    infra: Infra
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)


Seed = Callable[[Running, Brand, str], Awaitable[str]]


async def seed_loyalty(running: Running, brand: Brand, user_id: str) -> str:
    """A user with points and an engagement snapshot, as the achievements worker writes them."""
    marker = f"engaged-{secrets.token_hex(4)}"
    user_pk = await running.infra.db.fetchval(
        """INSERT INTO users (brand_id, external_id, points_balance, lifetime_points)
           VALUES ($1, $2, 750, 900) RETURNING id""",
        brand.pk,
        user_id,
    )
    await running.infra.db.execute(
        """INSERT INTO user_loyalty_state (user_id, state_version, user_snapshot, loyalty)
           VALUES ($1, 1, $2, $3)""",
        user_pk,
        {"engagement": {"segment": marker}},
        {"current_streak_days": 2},
    )
    return marker


async def seed_insights(running: Running, brand: Brand, user_id: str) -> str:
    """A user with a prediction, delivered as Customer.io does: a signed webhook to the brand's path."""
    marker = f"segment-{secrets.token_hex(4)}"
    await running.infra.db.execute(
        "INSERT INTO users (brand_id, external_id) VALUES ($1, $2)", brand.pk, user_id
    )
    raw, headers = signed({"user_id": user_id, "predictions": {"recommended_segment": marker}})
    answer = await running.clients["insights"].post(
        f"/webhooks/customer-io/{brand.slug}", content=raw, headers=headers
    )
    assert answer.status_code == 200, answer.text
    return marker


@dataclass(frozen=True)
class IsolationCase:
    service: str
    method: str
    path: str  # as the service's OpenAPI names it
    seed: Seed
    json_body: dict[str, Any] | None = None  # for PUT/POST routes
    query: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.service} {self.method} {self.path}"


ISOLATION_CASES: list[IsolationCase] = [
    IsolationCase("achievements", "GET", "/v1/users/{user_id}/loyalty", seed_loyalty),
    IsolationCase("insights", "GET", "/v1/users/{user_id}/insights", seed_insights),
]


def brand_scoped(path: str) -> bool:
    return "{user_id}" in path or path.startswith("/v1/")


@pytest.fixture(scope="module")
async def running(database_url: str, kafka_bootstrap: str) -> AsyncIterator[Running]:
    db = await create_pool(database_url, min_size=1, max_size=4)
    infra = Infra(database_url, kafka_bootstrap, db)
    result = Running(infra)
    async with AsyncExitStack() as stack:
        for name, factory in SERVICES:
            app = await stack.enter_async_context(factory(infra))
            result.clients[name] = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}", timeout=30)
            )
            result.clients[name].app = app  # type: ignore[attr-defined]
        yield result
    await db.close()


async def test_every_brand_scoped_route_has_an_isolation_case(running: Running) -> None:
    covered = {(case.service, case.method, case.path) for case in ISOLATION_CASES}
    served: set[tuple[str, str, str]] = set()
    for name, _ in SERVICES:
        schema = running.clients[name].app.openapi()  # type: ignore[attr-defined]
        for path, operations in schema["paths"].items():
            for method in operations:
                if method in ("get", "put", "post", "patch", "delete") and brand_scoped(path):
                    served.add((name, method.upper(), path))
    assert served - covered == set(), "brand-scoped routes without an isolation case: add them to ISOLATION_CASES"
    assert covered - served == set(), "isolation cases for routes no service serves any more"


async def make_brand(db: asyncpg.Pool, name: str) -> Brand:
    created = await create_brand(db, f"{name} {secrets.token_hex(3)}", CredentialCipher(None))
    return Brand(created.brand_id, created.slug, created.write_key)


async def call(running: Running, case: IsolationCase, brand: Brand, user_id: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await running.clients[case.service].request(
        case.method,
        case.path.replace("{user_id}", user_id),
        params=case.query,
        json=case.json_body,
        headers={"Authorization": f"Bearer {brand.write_key}"},
    )
    return response, time.perf_counter() - started


def comparable(response: httpx.Response, user_id: str) -> tuple[int, str, str]:
    """Status, content type and body, with the user id asked for written as <user>."""
    return response.status_code, response.headers["content-type"], response.text.replace(user_id, "<user>")


@pytest.mark.parametrize("case", ISOLATION_CASES, ids=lambda case: case.id)
async def test_another_brands_data_is_never_answered(running: Running, case: IsolationCase) -> None:
    brand_a = await make_brand(running.infra.db, "Isolation A")
    brand_b = await make_brand(running.infra.db, "Isolation B")
    user = f"iso-{secrets.token_hex(6)}"
    marker_b = await case.seed(running, brand_b, user)

    own, _ = await call(running, case, brand_b, user)
    assert own.status_code == 200, own.text
    assert marker_b in own.text  # the seed shows through the route, so what follows means isolation

    if "{user_id}" in case.path:
        await another_brands_user_is_an_unknown_user(running, case, brand_a, user, marker_b)
    else:  # a brand-wide read (KPIs, destination status): brand A's answer holds nothing of B's
        others, _ = await call(running, case, brand_a, user)
        assert others.status_code == 200, others.text
        assert marker_b not in others.text

    # The same user id (or the same kind of data) in both brands: each brand's key reads its own only.
    marker_a = await case.seed(running, brand_a, user)
    mine, _ = await call(running, case, brand_a, user)
    assert mine.status_code == 200
    assert marker_a in mine.text and marker_b not in mine.text
    theirs, _ = await call(running, case, brand_b, user)
    assert marker_b in theirs.text and marker_a not in theirs.text


async def another_brands_user_is_an_unknown_user(
    running: Running, case: IsolationCase, brand_a: Brand, user: str, marker_b: str
) -> None:
    """404, the same body and headers as for a user no brand has, and no timing difference."""
    never_seen = f"iso-{secrets.token_hex(6)}"  # as long as `user`
    others, _ = await call(running, case, brand_a, user)
    unknown, _ = await call(running, case, brand_a, never_seen)
    assert others.status_code == 404
    assert marker_b not in others.text
    assert comparable(others, user) == comparable(unknown, never_seen)
    assert set(others.headers) == set(unknown.headers)

    # Interleaved requests, medians compared (both answers take the same queries).
    timings: dict[str, list[float]] = {"other": [], "unknown": []}
    for _ in range(30):
        timings["other"].append((await call(running, case, brand_a, user))[1])
        timings["unknown"].append((await call(running, case, brand_a, never_seen))[1])
    other_median, unknown_median = (statistics.median(timings[k]) for k in ("other", "unknown"))
    assert abs(other_median - unknown_median) <= max(0.005, 0.5 * min(other_median, unknown_median)), timings

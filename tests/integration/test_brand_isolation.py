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

import base64
import itertools
import os
import re
import secrets
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from synergy_achievements.api import create_api
from synergy_achievements.rules import default_rules
from synergy_analytics.app import create_app as create_analytics_app
from synergy_analytics.app import serving as serving_analytics
from synergy_analytics.settings import AnalyticsSettings
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from synergy_dispatcher import store as dispatcher_store
from synergy_dispatcher.app import create_app as create_dispatcher_app
from synergy_dispatcher.app import serving as serving_dispatcher
from synergy_dispatcher.settings import DispatcherSettings
from synergy_insights.app import create_app as create_insights_app
from synergy_marketing.app import create_app as create_marketing_app
from synergy_marketing.publisher import MarketingPublisher

from tests.integration.insights.insights_harness import insights_settings, new_topic, signed
from tests.integration.marketing_preferences.harness import settings_for as marketing_settings

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


@asynccontextmanager
async def marketing_app(infra: Infra) -> AsyncIterator[Any]:
    """As tests/integration/marketing_preferences builds it: lifespan on, consumer and scheduler off."""
    settings = marketing_settings(infra.database_url, infra.kafka_bootstrap)
    topic = await new_topic(infra.kafka_bootstrap)
    app = create_marketing_app(settings, publisher=MarketingPublisher(infra.kafka_bootstrap, topic=topic))
    async with app.router.lifespan_context(app):
        yield app


DISPATCHER_KEY = base64.urlsafe_b64encode(b"dispatcher-isolation-test-key-32").decode()  # a Fernet key


@asynccontextmanager
async def dispatcher_app(infra: Infra) -> AsyncIterator[Any]:
    """As tests/integration/dispatcher builds it: the dispatcher serving fresh topics, its HTTP surface."""
    topics = [await new_topic(infra.kafka_bootstrap) for _ in range(3)]
    settings = DispatcherSettings(
        kafka_bootstrap_servers=infra.kafka_bootstrap, database_url=infra.database_url,
        synergy_encryption_key=DISPATCHER_KEY, dispatcher_group_id=f"dispatcher-iso-{uuid.uuid4().hex[:8]}",
        dispatcher_topics=",".join(topics), dispatcher_replica="iso",
    )
    async with serving_dispatcher(settings) as running:
        yield create_dispatcher_app(settings, running=running)


@asynccontextmanager
async def analytics_app(infra: Infra) -> AsyncIterator[Any]:
    """As tests/integration/analytics builds it: analytics serving fresh topics, its HTTP surface."""
    topics = [await new_topic(infra.kafka_bootstrap) for _ in range(3)]
    previous_dlq = os.environ.get("SYNERGY_TOPIC_DLQ")
    os.environ["SYNERGY_TOPIC_DLQ"] = await new_topic(infra.kafka_bootstrap)
    try:
        settings = AnalyticsSettings(
            kafka_bootstrap_servers=infra.kafka_bootstrap, database_url=infra.database_url,
            analytics_topics=",".join(topics), analytics_group_id=f"analytics-iso-{uuid.uuid4().hex[:8]}",
            analytics_batch_wait="20ms", analytics_retry_cap="2s",
        )
        async with serving_analytics(settings) as running:
            yield create_analytics_app(settings, running)
    finally:
        if previous_dlq is None:
            os.environ.pop("SYNERGY_TOPIC_DLQ", None)
        else:
            os.environ["SYNERGY_TOPIC_DLQ"] = previous_dlq


# (service name as its directory under services/, app factory).
SERVICES: list[tuple[str, AppFactory]] = [
    ("achievements", achievements_app),
    ("insights", insights_app),
    ("marketing", marketing_app),
    ("dispatcher", dispatcher_app),
    ("analytics", analytics_app),
]

# Services under services/ that serve no brand-scoped read, and why; every other one must be in SERVICES.
WITHOUT_BRAND_READS: dict[str, str] = {
    "ingest": "only accepts writes (POST /v1/track, /v1/batch, ...): it answers what it accepted, never stored data",
    "cio-sink": "a consumer writing to Customer.io; its HTTP surface is /healthz, /readyz and /metrics only",
}


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


# Counts that differ on every seed, so one brand's KPI answer can be told from another's.
distinct_counts = itertools.count(3)


async def seed_user(running: Running, brand: Brand, user_id: str, email: str | None = None) -> int:
    pk: int = await running.infra.db.fetchval(
        """INSERT INTO users (brand_id, external_id, email) VALUES ($1, $2, $3)
           ON CONFLICT (brand_id, external_id) DO UPDATE SET email = EXCLUDED.email RETURNING id""",
        brand.pk, user_id, email,
    )
    return pk


async def seed_email(running: Running, brand: Brand, user_id: str) -> str:
    """A user the brand knows with an email address (the preferences fall back to the user's email)."""
    marker = f"iso-{secrets.token_hex(4)}@example.com"
    await seed_user(running, brand, user_id, marker)
    return marker


async def seed_stored_preferences(running: Running, brand: Brand, user_id: str) -> str:
    """Stored preferences with an email address (what a PUT answers is the stored row)."""
    marker = f"iso-{secrets.token_hex(4)}@example.com"
    await running.infra.db.execute(
        """INSERT INTO email_preferences (brand_id, user_id, email) VALUES ($1, $2, $3)
           ON CONFLICT (brand_id, user_id) DO UPDATE SET email = EXCLUDED.email""",
        brand.pk, user_id, marker,
    )
    return marker


async def insert_queue_item(
    running: Running, brand: Brand, user_id: str, trigger_data: dict[str, Any], revenue: Decimal | None = None
) -> None:
    now = datetime.now(UTC)
    await running.infra.db.execute(
        """INSERT INTO marketing_queue (queue_id, brand_id, user_id, trigger_type, event_name, event_id,
               trigger_data, message_data, scheduled_send_time, status, sent, sent_at, converted,
               conversion_revenue)
           VALUES ($1, $2, $3, 'abandoned_cart', 'cart_abandoned', $4, $5, $6, $7, $8, TRUE, $7, $9, $10)""",
        f"queue_{uuid.uuid4().hex[:16]}", brand.pk, user_id, uuid.uuid4().hex[:26].upper(), trigger_data,
        {"trigger_data": trigger_data}, now, "converted" if revenue else "sent", revenue is not None, revenue,
    )


async def seed_marketing_queue(running: Running, brand: Brand, user_id: str) -> str:
    """A sent abandoned-cart mail in the user's queue, as the marketing scheduler writes it."""
    marker = f"cart-{secrets.token_hex(4)}"
    await insert_queue_item(running, brand, user_id, {"cart_id": marker})
    return marker


async def seed_marketing_summary(running: Running, brand: Brand, user_id: str) -> str:
    """A converted mail whose recovered revenue is this brand's alone."""
    revenue = Decimal(f"{1000 + next(distinct_counts)}.25")
    await insert_queue_item(running, brand, user_id, {"cart_id": "c"}, revenue)
    return f'"recovered_revenue":{revenue}'


async def seed_recommendations(running: Running, brand: Brand, user_id: str) -> str:
    """The user viewed a product of a category; the category's popular product is recommended."""
    marker = f"Lamp {secrets.token_hex(4)}"
    now = datetime.now(UTC)
    await running.infra.db.execute(
        """INSERT INTO product_views (brand_id, person, user_id, product_id, product_name, product_price,
               product_category, view_count, first_viewed_at, last_viewed_at)
           VALUES ($1, $2, $2, $3, $4, 19.90, 'lighting', 2, $5, $5)""",
        brand.pk, user_id, f"sku-{secrets.token_hex(3)}", marker, now,
    )
    return marker


async def seed_destination(running: Running, brand: Brand, user_id: str) -> str:
    """A webhook destination of the brand, as `synergy destinations add` stores it."""
    marker = f"hook-{secrets.token_hex(4)}"
    await dispatcher_store.add_destination(
        running.infra.db, CredentialCipher(DISPATCHER_KEY), brand.brand_id, marker, "webhook",
        {"url": "http://127.0.0.1:9/hook"}, {"signing_secrets": ["whsec_aXNvbGF0aW9uLXRlc3Q="]},
    )
    return marker


async def log_actions(running: Running, brand: Brand, users: list[str], names: list[str]) -> None:
    """Actions in the analytics log an hour ago, a minute apart, as analytics writes them."""
    start = datetime.now(UTC) - timedelta(hours=1)
    for user in users:
        for k, name in enumerate(names):
            await running.infra.db.execute(
                """INSERT INTO user_action_log (event_id, occurred_at, brand_id, user_id, action_type)
                   VALUES ($1, $2, $3, $4, $5)""",
                uuid.uuid4().hex, start + timedelta(minutes=k), brand.pk, user, name,
            )


def kpi_seed(names: list[str], counted: str) -> Seed:
    """A KPI seed: a number of users (different on every seed) each doing `names` in order; the marker is
    that number under `counted` in the answer."""

    async def seed(running: Running, brand: Brand, user_id: str) -> str:
        count = next(distinct_counts)
        await log_actions(running, brand, [f"{user_id}-{k}" for k in range(count)], names)
        return f'"{counted}":{count},'

    return seed


async def seed_user_analytics(running: Running, brand: Brand, user_id: str) -> str:
    """A user with a referral code, as analytics' read models hold it."""
    marker = f"REF{secrets.token_hex(4).upper()}"
    user_pk = await seed_user(running, brand, user_id)
    await running.infra.db.execute("INSERT INTO referral_codes (user_id, code) VALUES ($1, $2)", user_pk, marker)
    return marker


@dataclass(frozen=True)
class IsolationCase:
    service: str
    method: str
    path: str  # as the service's OpenAPI names it
    seed: Seed
    json_body: dict[str, Any] | None = None  # for PUT/POST routes
    query: dict[str, str] = field(default_factory=dict)
    unknown_status: int = 404  # how the route answers a user the brand never saw

    @property
    def id(self) -> str:
        return f"{self.service} {self.method} {self.path}"


ISOLATION_CASES: list[IsolationCase] = [
    IsolationCase("achievements", "GET", "/v1/users/{user_id}/loyalty", seed_loyalty),
    IsolationCase("insights", "GET", "/v1/users/{user_id}/insights", seed_insights),
    IsolationCase("marketing", "GET", "/v1/users/{user_id}/email-preferences", seed_email),
    # A PUT for a user the brand has not seen creates that user with the defaults (sign-up opt-ins), so
    # another brand's user is answered as such a new user: 200 with the defaults, never B's data.
    IsolationCase("marketing", "PUT", "/v1/users/{user_id}/email-preferences", seed_stored_preferences,
                  json_body={"price_drop_alerts": False}, unknown_status=200),
    IsolationCase("marketing", "GET", "/v1/users/{user_id}/marketing", seed_marketing_queue),
    IsolationCase("marketing", "GET", "/v1/users/{user_id}/recommendations", seed_recommendations),
    IsolationCase("marketing", "GET", "/v1/marketing/summary", seed_marketing_summary),
    IsolationCase("dispatcher", "GET", "/v1/destinations/status", seed_destination),
    IsolationCase("analytics", "GET", "/v1/kpis/funnel", kpi_seed(["iso_view", "iso_buy"], "users"),
                  query={"steps": "iso_view,iso_buy"}),
    IsolationCase("analytics", "GET", "/v1/kpis/time-to-first", kpi_seed(["iso_signup", "iso_scan"], "cohort_users"),
                  query={"action": "iso_scan", "from": "iso_signup"}),
    IsolationCase("analytics", "GET", "/v1/kpis/retention", kpi_seed(["iso_signup"], "cohort_users"),
                  query={"start": "iso_signup", "return": "iso_scan", "week": "0"}),
    IsolationCase("analytics", "GET", "/v1/users/{user_id}/analytics", seed_user_analytics),
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


SERVICES_DIR = Path(__file__).parents[2] / "services"
# A route declared in source: `.get("/v1/...")`, `.put(\n    "/users/{user_id}...")`, add_api_route(...).
DECLARED_ROUTE = re.compile(r'\.(?:get|put|post|patch|delete|api_route|add_api_route)\(\s*"([^"]+)"')


def declared_reads(service_dir: Path) -> set[str]:
    """The brand-scoped non-POST routes a service's source declares (POST writes under /v1/ are not reads)."""
    found = set()
    for source in (service_dir / "src").rglob("*.py"):
        for match in DECLARED_ROUTE.finditer(source.read_text()):
            if brand_scoped(match.group(1)) and not match.group(0).startswith(".post"):
                found.add(f"{source.name}: {match.group(1)}")
    return found


def test_every_service_is_listed_or_has_no_brand_scoped_reads() -> None:
    """A new service under services/ cannot be forgotten: it joins SERVICES or says why it needs not."""
    directories = {d.name for d in SERVICES_DIR.iterdir() if (d / "pyproject.toml").exists()}
    listed = {name for name, _ in SERVICES}
    assert directories - listed - set(WITHOUT_BRAND_READS) == set(), "services missing from SERVICES"
    assert (listed | set(WITHOUT_BRAND_READS)) - directories == set(), "SERVICES names no directory"
    assert listed & set(WITHOUT_BRAND_READS) == set()
    for name in WITHOUT_BRAND_READS:
        assert declared_reads(SERVICES_DIR / name) == set(), f"{name} now serves brand reads: add it to SERVICES"
    for name in listed:  # the scan sees the routes the OpenAPI test checks, so an empty one proves nothing
        assert declared_reads(SERVICES_DIR / name), f"{name}: no brand-scoped route found in its source"


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
    assert others.status_code == case.unknown_status == unknown.status_code, others.text
    assert marker_b not in others.text
    if case.unknown_status == 404:
        assert comparable(others, user) == comparable(unknown, never_seen)
    else:  # a new user's answer carries its own signed links and times: the same fields and flags
        assert others.headers["content-type"] == unknown.headers["content-type"]
        assert without_links_and_times(others.json()) == without_links_and_times(unknown.json())
        assert others.json()["user_id"] == user and unknown.json()["user_id"] == never_seen
    assert set(others.headers) == set(unknown.headers)

    # Interleaved requests, medians compared (both answers take the same queries).
    timings: dict[str, list[float]] = {"other": [], "unknown": []}
    for _ in range(30):
        timings["other"].append((await call(running, case, brand_a, user))[1])
        timings["unknown"].append((await call(running, case, brand_a, never_seen))[1])
    other_median, unknown_median = (statistics.median(timings[k]) for k in ("other", "unknown"))
    assert abs(other_median - unknown_median) <= max(0.005, 0.5 * min(other_median, unknown_median)), timings


def without_links_and_times(body: dict[str, Any]) -> dict[str, Any]:
    per_user = {"user_id", "unsubscribe_token", "unsubscribe_url", "preferences_url", "created_at", "updated_at"}
    return {k: v for k, v in body.items() if k not in per_user}

"""Insights benchmark: signed Customer.io webhooks per second end to end (verify signature, log raw,
merge and upsert the profile, publish to Kafka), against a bare asyncpg upsert loop measured in the same
run as the ceiling; and the p99 answer time, which must stay far under Customer.io's 4 s timeout.

    uv run python tests/bench/bench_insights.py [--webhooks 3000] [--concurrency 32]

Infrastructure: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set (the database must be migrated), else
the project's test infrastructure (synergy_common.testinfra) with a fresh, migrated database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from decimal import Decimal

import httpx
import orjson
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool, migrate
from synergy_common.localinfra import create_topic
from synergy_insights.app import create_app
from synergy_insights.settings import InsightsSettings
from synergy_insights.signature import expected_signature

KEY = "bench-signing-key"
USERS = 200


async def infrastructure() -> tuple[str, str, object | None]:
    kafka, database = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("DATABASE_URL")
    if kafka and database:
        return kafka, database, None
    from synergy_common.testinfra import aacquire

    infra = await aacquire()
    database = await infra.create_database(f"bench_insights_{uuid.uuid4().hex[:8]}")
    await migrate(database)
    return infra.bootstrap_servers, database, infra


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def bare_upsert_loop(pool, user_pks: list[int], count: int, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    """The ceiling: one asyncpg upsert of a user_ai_profiles row per webhook, nothing else."""
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            await pool.execute(
                """INSERT INTO user_ai_profiles (user_id, churn_probability, recommended_segment, ai_insights)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (user_id) DO UPDATE SET churn_probability = EXCLUDED.churn_probability,
                     recommended_segment = EXCLUDED.recommended_segment, ai_insights = EXCLUDED.ai_insights,
                     last_synced_at = now()""",
                user_pks[i % len(user_pks)],
                Decimal(i % 100) / 100,
                f"segment-{i}",
                {"bench": i},
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    kafka, database, infra = await infrastructure()
    pool = await create_pool(database, min_size=2, max_size=10)
    brand = await create_brand(pool, f"Bench {uuid.uuid4().hex[:6]}", CredentialCipher(None))
    users = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(USERS)]
    user_pks = [
        await pool.fetchval(
            "INSERT INTO users (brand_id, external_id) VALUES ($1, $2) RETURNING id",
            int(brand.brand_id),
            user,
        )
        for user in users
    ]
    topic = f"bench.insights.{uuid.uuid4().hex[:8]}"
    await create_topic(kafka, topic, partitions=3)
    settings = InsightsSettings(
        database_url=database,
        kafka_bootstrap_servers=kafka,
        cio_webhook_signing_key=KEY,
        insights_default_brand_id=brand.brand_id,
        log_level="WARNING",
    )
    app = create_app(settings, insights_topic=topic)
    base = int(time.time()) - 3600
    bodies = [
        orjson.dumps(
            {
                "user_id": users[i % USERS],
                "timestamp": base + i,
                "predictions": {"churn_probability": (i % 100) / 100, "recommended_segment": f"segment-{i}"},
            }
        )
        for i in range(args.webhooks)
    ]
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://insights") as client:

            async def send(raw: bytes) -> None:
                stamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-CIO-Timestamp": stamp,
                    "X-CIO-Signature": expected_signature(KEY, stamp, raw),
                }
                started = time.perf_counter()
                answer = await client.post("/webhooks/customer-io", content=raw, headers=headers)
                latencies.append(time.perf_counter() - started)
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

            for raw in bodies[:50]:  # warm up: connections, producer, caches
                await send(raw)
            latencies.clear()
            statuses.clear()
            queue = iter(bodies[50:])

            async def worker() -> None:
                for raw in queue:
                    await send(raw)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            webhooks_per_second = len(latencies) / (time.perf_counter() - started)

    ceiling = await bare_upsert_loop(pool, user_pks, len(latencies), min(args.concurrency, 10))
    await pool.close()
    if infra is not None:
        await asyncio.to_thread(infra.close)  # type: ignore[attr-defined]

    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    print(f"webhooks: {len(latencies)} at concurrency {args.concurrency}; answers {statuses}")
    print(f"insights end to end: {webhooks_per_second:,.0f} signed webhooks/s")
    print(f"ceiling (bare asyncpg upsert loop, same run): {ceiling:,.0f} upserts/s")
    print(f"ratio: {webhooks_per_second / ceiling:.2f} of the ceiling")
    print(
        f"latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
        f"({p99 / 4.0:.3f} of Customer.io's 4 s timeout)"
    )


if __name__ == "__main__":
    asyncio.run(main())

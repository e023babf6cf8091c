"""Group commit of preference changes: a batch is one statement for users without a row, one more for
stored rows; a row another writer changed in between is never overwritten; a user's changes keep their
order; and the hot routes (served without FastAPI's routing) still carry correlation ids, are counted,
and read repeated query parameters as FastAPI does."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from synergy_common.db import create_pool
from synergy_marketing.preferences_store import (
    PendingChange,
    PreferenceWriter,
    save_batch,
    save_changes,
)

from tests.integration.marketing_preferences.harness import (
    changes_of,
    make_brand,
    make_user,
    stored_preferences,
    token,
)


class StatementCounter:
    """A real connection that counts the statements it sends and can run something of another writer's
    right after its first statement (between a batch's read and its update)."""

    def __init__(
        self, connection: asyncpg.Connection, after_first: Callable[[], Awaitable[Any]] | None = None
    ):
        self.connection = connection
        self.after_first = after_first
        self.statements = 0

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows = await self.connection.fetch(query, *args)
        self.statements += 1
        if self.after_first is not None:
            interfere, self.after_first = self.after_first, None
            await interfere()
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


def pending(brand_id: int, user_id: str, change: dict[str, Any], source: str = "api") -> PendingChange:
    return PendingChange(
        brand_id, user_id, change, source, datetime.now(UTC), asyncio.get_running_loop().create_future()
    )  # type: ignore[arg-type]


async def test_one_click_for_users_without_a_row_is_one_statement_with_its_audit_rows(
    database_factory,
) -> None:
    db = await create_pool(await database_factory("prefsgroup"), min_size=1, max_size=2)
    try:
        brand = await make_brand(db)
        users = [f"fresh-{n}" for n in range(5)]
        async with db.acquire() as connection:
            counted = StatementCounter(connection)
            results = await save_changes(
                counted,  # type: ignore[arg-type]
                [pending(brand.pk, user, {"unsubscribed": True}, "one_click") for user in users],
            )
        assert counted.statements == 1
        assert [sorted(r.changed) for r in results if r is not None] == [
            ["unsubscribed", "unsubscribed_at"]
        ] * 5
        for user in users:
            stored = await stored_preferences(db, brand, user)
            assert stored is not None and stored["unsubscribed"] is True and stored["newsletter"] is True
            [audit] = await changes_of(db, brand, user)
            assert audit["source"] == "one_click"
            assert audit["envelope"]["data"]["unsubscribed"] is True
            assert audit["envelope"]["identifiers"] == {"id": user}
        # the same POSTs again change nothing, write nothing, and still take one statement
        async with db.acquire() as connection:
            counted = StatementCounter(connection)
            again = await save_changes(
                counted,  # type: ignore[arg-type]
                [pending(brand.pk, user, {"unsubscribed": True}, "one_click") for user in users],
            )
        assert counted.statements == 1
        assert [r.any for r in again if r is not None] == [False] * 5
        assert await db.fetchval("SELECT count(*) FROM email_preference_changes") == 5
    finally:
        await db.close()


async def test_a_row_another_writer_changed_in_between_is_not_overwritten_and_is_applied_again_locked(
    database_factory,
) -> None:
    db = await create_pool(await database_factory("prefsrace"), min_size=2, max_size=3)
    try:
        brand = await make_brand(db)
        await db.execute("INSERT INTO email_preferences (brand_id, user_id) VALUES ($1, 'stored')", brand.pk)

        async def other_writer() -> None:  # another replica turns price drop alerts off meanwhile
            await db.execute(
                "UPDATE email_preferences SET price_drop_alerts = FALSE WHERE brand_id = $1 AND user_id = 'stored'",
                brand.pk,
            )

        async with db.acquire() as connection:
            racing = StatementCounter(connection, after_first=other_writer)
            [result] = await save_changes(racing, [pending(brand.pk, "stored", {"newsletter": False})])  # type: ignore[arg-type]
        assert result is None  # not saved: the row no longer held what was read
        stored = await stored_preferences(db, brand, "stored")
        assert (stored["newsletter"], stored["price_drop_alerts"]) == (True, False)
        assert await changes_of(db, brand, "stored") == []

        async with db.acquire() as connection:
            racing = StatementCounter(connection, after_first=other_writer)
            [applied] = await save_batch(racing, [pending(brand.pk, "stored", {"newsletter": False})])  # type: ignore[arg-type]
        assert applied.changed == {"newsletter": (True, False)}
        stored = await stored_preferences(db, brand, "stored")
        assert (stored["newsletter"], stored["price_drop_alerts"]) == (False, False)
        [audit] = await changes_of(db, brand, "stored")
        assert audit["changes"] == {"newsletter": [True, False]}
        assert (
            audit["envelope"]["data"]["price_drop_alerts"] is False
        )  # Customer.io gets the other's change too
    finally:
        await db.close()


async def test_one_users_changes_from_concurrent_requests_apply_in_the_order_they_came(
    database_factory,
) -> None:
    db = await create_pool(await database_factory("prefsorder"), min_size=1, max_size=4)
    writer = PreferenceWriter(db, writers=2)
    task = asyncio.create_task(writer.run_forever())
    try:
        brand = await make_brand(db)
        user = await make_user(db, brand)
        wanted = [False, True] * 10  # newsletter off, on, off, ... from 20 requests in flight at once
        others = [await make_user(db, brand) for _ in range(20)]
        results = await asyncio.gather(
            *(writer.change(brand.pk, user, {"newsletter": value}, "api") for value in wanted),
            *(writer.change(brand.pk, other, {"unsubscribed": True}, "one_click") for other in others),
        )
        assert all(result.any for result in results)
        audit = await changes_of(db, brand, user)
        assert [change["changes"]["newsletter"] for change in audit] == [[True, False], [False, True]] * 10
        assert (await stored_preferences(db, brand, user))["newsletter"] is True
        assert (
            await db.fetchval(
                "SELECT count(*) FROM email_preferences WHERE brand_id = $1 AND unsubscribed", brand.pk
            )
            == 20
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


async def test_two_replicas_changing_the_same_users_at_once_lose_no_change(database_factory) -> None:
    db = await create_pool(await database_factory("prefsreplicas"), min_size=2, max_size=6)
    replicas = [PreferenceWriter(db, writers=2), PreferenceWriter(db, writers=2)]
    tasks = [asyncio.create_task(replica.run_forever()) for replica in replicas]
    try:
        brand = await make_brand(db)
        users = [f"shared-{n}" for n in range(30)]
        for _ in range(3):  # each replica sets its own field, a few times over, on the same rows
            await asyncio.gather(
                *(replicas[0].change(brand.pk, u, {"newsletter": False}, "api") for u in users),
                *(
                    replicas[1].change(brand.pk, u, {"price_drop_alerts": False}, "preference_centre")
                    for u in users
                ),
            )
            await asyncio.gather(
                *(replicas[0].change(brand.pk, u, {"newsletter": True}, "api") for u in users),
                *(
                    replicas[1].change(brand.pk, u, {"price_drop_alerts": True}, "preference_centre")
                    for u in users
                ),
            )
        await asyncio.gather(
            *(replicas[0].change(brand.pk, u, {"newsletter": False}, "api") for u in users),
            *(replicas[1].change(brand.pk, u, {"unsubscribed": True}, "one_click") for u in users),
        )
        for user in users:
            stored = await stored_preferences(db, brand, user)
            assert (stored["newsletter"], stored["price_drop_alerts"], stored["unsubscribed"]) == (
                False,
                True,
                True,
            )
            audit = await changes_of(db, brand, user)
            # 7 newsletter changes, 6 price drop changes, 1 unsubscribe: each stored once, none lost
            assert sorted(
                name for change in audit for name in change["changes"] if name != "unsubscribed_at"
            ) == (["newsletter"] * 7 + ["price_drop_alerts"] * 6 + ["unsubscribed"])
            # the last change published carries the row as it is now: Customer.io ends up agreeing
            last = audit[-1]["envelope"]["data"]
            assert (last["newsletter"], last["price_drop_alerts"], last["unsubscribed"]) == (
                False,
                True,
                True,
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()


async def test_the_one_click_route_keeps_its_correlation_id_and_is_counted_by_route(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)

    async def counted() -> float:
        metrics = (await marketing.client.get("/metrics")).text
        match = re.search(
            r'^synergy_marketing_requests_total\{route="/unsubscribe",status="200"\} (\S+)$', metrics, re.M
        )
        return float(match.group(1)) if match else 0.0

    before = await counted()
    response = await marketing.client.post(
        f"/unsubscribe?token={token('unsubscribe', marketing.brand, user)}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Correlation-ID": "click-42"},
    )
    assert response.status_code == 200
    assert response.headers["x-correlation-id"] == "click-42"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert await counted() == before + 1
    assert (await stored_preferences(marketing.db, marketing.brand, user))["unsubscribed"] is True


async def test_the_last_token_of_a_repeated_query_parameter_is_the_one_used_as_by_fastapi(marketing) -> None:
    user = await make_user(marketing.db, marketing.brand)
    response = await marketing.client.post(
        f"/unsubscribe?token=garbage&token={token('unsubscribe', marketing.brand, user)}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert (await stored_preferences(marketing.db, marketing.brand, user))["unsubscribed"] is True
    refused = await marketing.client.post(
        f"/unsubscribe?token={token('unsubscribe', marketing.brand, user)}&token=garbage",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert refused.status_code == 400

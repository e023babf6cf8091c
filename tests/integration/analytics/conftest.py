from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from synergy_common.db import create_pool

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()

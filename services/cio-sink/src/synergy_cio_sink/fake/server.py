"""Run the fake in-process on a free port (tests), or standalone (local development)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from synergy_cio_sink.fake.app import CustomerIoFake


@asynccontextmanager
async def serve_fake(fake: CustomerIoFake, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `fake` until the block exits; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(fake.app, host=host, port=port, log_level="warning",
                                           lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task

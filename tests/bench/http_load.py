"""A load generator that costs little: keep-alive HTTP/1.1 over asyncio protocols, pre-built requests.

httpx spends about 5 ms of CPU per request here, so it measures itself. This client writes request
bytes built before the clock starts, reads the status line and Content-Length, and nothing else.
It runs on uvloop. `cpu_share` is this process's CPU seconds over the wall time of the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit


def build_request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.needed: int | None = None
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.needed is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : stop if stop >= 0 else len(head)])
            self.needed = end + 4 + length
        if len(self.buffer) >= self.needed:
            del self.buffer[: self.needed]
            self.needed = None
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc!r}"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    client_cpu_seconds: float

    @property
    def cpu_share(self) -> float:
        return self.client_cpu_seconds / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def drive(url: str, requests: Sequence[bytes], concurrency: int) -> LoadResult:
    """Sends every request once over `concurrency` keep-alive connections."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(concurrency):
        _, protocol = await loop.create_connection(_Connection, parts.hostname, parts.port)
        connections.append(protocol)
    next_request = iter(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker(connection: _Connection) -> None:
        for request in next_request:
            started = time.perf_counter()
            status = await connection.send(request)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1

    cpu_started = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return LoadResult(len(latencies), seconds, latencies, statuses, cpu)

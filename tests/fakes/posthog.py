"""A faithful fake of PostHog's capture API (`POST /batch/`, `POST /i/v0/e/`), for tests and benchmarks.

Rules kept from PostHog's capture service (see /work/shared/notes, "Destinations"):
- the body is JSON, else 400; `api_key` must be a known project key, else 401;
- every item needs `event` (a non-empty string) and `distinct_id` (non-empty), else 400 for the whole
  request; `properties` is an object, `uuid` a valid UUID and `timestamp` ISO 8601 when present;
- an item over 1 MB, or a request over 5 MB (what the dispatcher promises to stay within), is 413;
- 200 `{"status": 1}` on success;
- deduplication on (uuid, event, timestamp, distinct_id): a redelivered item is not counted again.
Faults: `fail_next(n, status, retry_after)` and `fail_for(seconds, status, retry_after)`, a revoked key,
and `hold` (ingest, then wait before answering: a crash of the sender mid-request).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from tests.fakes.http_server import HttpServer, Request, Response

MAX_EVENT_BYTES = 1_000_000
MAX_REQUEST_BYTES = 5_000_000
OK = Response(200, b'{"status":1}')


@dataclass
class Fault:
    status: int
    retry_after: str | None
    remaining: int | None = None  # requests still to fail, or None while `until`
    until: float | None = None


@dataclass
class PostHogFake:
    api_keys: set[str]
    ingested: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    order: list[dict[str, Any]] = field(default_factory=list)  # first ingestion of each, in arrival order
    received_items: int = 0
    duplicates: int = 0
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    hold: float = 0.0
    server: HttpServer | None = None

    async def start(self) -> PostHogFake:
        self.server = await HttpServer(self._handle, max_body=64 * 1024 * 1024).start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    @property
    def host(self) -> str:
        assert self.server is not None
        return self.server.url

    def fail_next(self, requests: int, status: int, retry_after: str | None = None) -> None:
        self.faults.append(Fault(status, retry_after, remaining=requests))

    def fail_for(self, seconds: float, status: int, retry_after: str | None = None) -> None:
        self.faults.append(Fault(status, retry_after, until=time.monotonic() + seconds))

    def events_by_synergy_id(self) -> dict[str, dict[str, Any]]:
        return {item["properties"].get("synergy_event_id"): item for item in self.order}

    def _fault(self) -> Fault | None:
        now = time.monotonic()
        while self.faults:
            fault = self.faults[0]
            if fault.remaining is not None and fault.remaining > 0:
                fault.remaining -= 1
                return fault
            if fault.until is not None and now < fault.until:
                return fault
            self.faults.pop(0)
        return None

    def _answer(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        body = {"type": "validation_error" if status == 400 else "error", "code": str(status),
                "detail": message}
        return Response(status, json.dumps(body).encode(), headers or {})

    async def _handle(self, request: Request) -> Response:
        self.requests += 1
        if request.method != "POST" or request.path.rstrip("/") not in ("/batch", "/i/v0/e", "/capture"):
            return self._answer(404, "not found")
        if len(request.body) > MAX_REQUEST_BYTES:
            return self._answer(413, "request too large")
        fault = self._fault()
        if fault is not None:
            return self._answer(fault.status, "injected fault",
                                {"retry-after": fault.retry_after} if fault.retry_after else {})
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return self._answer(400, "failed to decode the request body")
        if not isinstance(body, dict):
            return self._answer(400, "the body is not an object")
        if body.get("api_key") not in self.api_keys:
            return self._answer(401, "project API key invalid")
        items = body.get("batch") if request.path.rstrip("/") == "/batch" else [body]
        if not isinstance(items, list) or not items:
            return self._answer(400, "batch must be a non-empty list")
        for item in items:
            problem = item_problem(item)
            if problem is not None:
                return self._answer(413 if problem == "event too large" else 400, problem)
        for item in items:
            self.received_items += 1
            key = (str(item.get("uuid")), item["event"], str(item.get("timestamp")), str(item["distinct_id"]))
            if key in self.ingested:
                self.duplicates += 1
                continue
            self.ingested[key] = item
            self.order.append(item)
        if self.hold:
            await asyncio.sleep(self.hold)
        self.statuses[200] = self.statuses.get(200, 0) + 1
        return OK


def item_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "an item is not an object"
    if len(orjson.dumps(item)) > MAX_EVENT_BYTES:
        return "event too large"
    if not isinstance(item.get("event"), str) or not item["event"]:
        return "an item has no event"
    if item.get("distinct_id") in (None, ""):
        return "an item has no distinct_id"
    if "properties" in item and not isinstance(item["properties"], dict):
        return "properties must be an object"
    if item.get("uuid") is not None:
        try:
            uuid.UUID(str(item["uuid"]))
        except ValueError:
            return "uuid is not a UUID"
    if item.get("timestamp") is not None:
        try:
            datetime.fromisoformat(str(item["timestamp"]).replace("Z", "+00:00"))
        except ValueError:
            return "timestamp is not ISO 8601"
    return None

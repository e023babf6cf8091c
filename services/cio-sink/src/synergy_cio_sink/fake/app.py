"""A faithful Customer.io Track API fake (CUSTOMERIO.md), with fault injection and inspection.

Rules kept: Basic auth site_id:api_key; v1 identify / event / anonymous event; v2 batch with its
500 KB request and 32 KB item limits and 207 per-index errors; event id (ULID) deduplication;
event name <= 100 bytes; data <= 100,000 bytes; attribute names <= 150 bytes and values <= 1000
bytes; <= 300 attributes per person; person id <= 150 bytes.

Faults: full outage, the next N answers forced (e.g. 429 with Retry-After, 503), a random share
of 429s or 5xxs, slow answers (processed, then answered late: the client's timeout fires), a
request-rate cap, latency on every request, and requests refused whole as malformed (400, nothing
of them stored): every request (`malformed_all`, a misconfiguration) or those whose body contains
a marker (`malformed_marker`, one bad item spoiling its batch).

Inspection: GET /_fake/received; POST /_fake/faults; POST /_fake/reset.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from ulid import ULID

MAX_REQUEST_BYTES = 500 * 1024
MAX_ITEM_BYTES = 32 * 1024
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
MAX_PERSON_ID_BYTES = 150
V2_ACTIONS = {"identify", "event", "page", "screen", "delete", "suppress", "unsuppress",
              "add_device", "delete_device", "merge", "add_relationships", "delete_relationships"}


@dataclass
class Faults:
    outage: bool = False
    forced: deque[tuple[int, float | None]] = field(default_factory=deque)  # (status, retry_after)
    throttle_ratio: float = 0.0
    error_ratio: float = 0.0
    retry_after: float | None = 1.0
    slow_next: int = 0
    slow_seconds: float = 0.0
    latency: float = 0.0
    rate_cap: float | None = None
    malformed_all: bool = False
    malformed_marker: str | None = None


@dataclass
class ReceivedEvent:
    event_id: str | None
    site_id: str
    person: str  # "id:<id>" or "anon:<anonymous id>"
    name: str
    type: str
    data: dict[str, Any]
    timestamp: int | None
    api: str


class ItemError(Exception):
    def __init__(self, field: str, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.field, self.message, self.reason = field, message, reason


def _size(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value))


class CustomerIoFake:
    def __init__(self, credentials: dict[str, str] | None = None, seed: int = 0) -> None:
        self.credentials = dict(credentials or {})  # site_id -> api_key; empty accepts any
        self.faults = Faults()
        self._rng = random.Random(seed)
        self.reset()
        self.app = Starlette(routes=[
            Route("/api/v1/customers/{person_id:path}/events", self._v1_event, methods=["POST"]),
            Route("/api/v1/customers/{person_id:path}", self._v1_identify, methods=["PUT"]),
            Route("/api/v1/events", self._v1_anonymous_event, methods=["POST"]),
            Route("/api/v2/batch", self._v2_batch, methods=["POST"]),
            Route("/_fake/received", self._inspect, methods=["GET"]),
            Route("/_fake/faults", self._set_faults, methods=["POST"]),
            Route("/_fake/reset", self._reset, methods=["POST"]),
        ])

    # --- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        self.events: dict[str, ReceivedEvent] = {}
        self.event_order: list[ReceivedEvent] = []  # first arrival of each unique event, in order
        self.duplicates: Counter[str] = Counter()
        self.people: dict[tuple[str, str], dict[str, Any]] = {}
        self.identify_count = 0
        self.statuses: Counter[int] = Counter()
        self.requests = 0
        self.max_requests_per_second = 0
        self._recent: deque[float] = deque()

    def clear_faults(self) -> None:
        self.faults = Faults()

    def force(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        """The next `times` requests are answered `status` (and Retry-After, when given)."""
        self.faults.forced.extend([(status, retry_after)] * times)

    def events_for(self, person: str) -> list[ReceivedEvent]:
        return [event for event in self.event_order if event.person == person]

    # --- helpers -------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> str | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            site_id, _, api_key = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        if not site_id or (self.credentials and self.credentials.get(site_id) != api_key):
            return None
        return site_id

    def _count_rate(self) -> bool:
        """Record the arrival; True when it goes over the configured cap."""
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        self.max_requests_per_second = max(self.max_requests_per_second, len(self._recent))
        cap = self.faults.rate_cap
        return cap is not None and len(self._recent) > cap

    async def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
        self.statuses[status] += 1
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        if self.faults.slow_next > 0:
            self.faults.slow_next -= 1
            await asyncio.sleep(self.faults.slow_seconds)
        return Response(orjson.dumps({} if body is None else body), status, headers,
                        media_type="application/json")

    async def _gate(self, request: Request) -> tuple[Response | None, str]:
        """Faults and authentication, before any processing."""
        self.requests += 1
        over_cap = self._count_rate()
        faults = self.faults
        if faults.outage:
            return await self._answer(503, {"meta": {"error": "outage"}}), ""
        if faults.forced:
            status, retry_after = faults.forced.popleft()
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
            return await self._answer(status, {"meta": {"error": "forced"}}, headers), ""
        if over_cap or (faults.throttle_ratio and self._rng.random() < faults.throttle_ratio):
            retry_after = faults.retry_after if faults.retry_after is not None else 1.0
            return await self._answer(429, {"meta": {"error": "rate limited"}},
                                      {"Retry-After": f"{retry_after:g}"}), ""
        if faults.error_ratio and self._rng.random() < faults.error_ratio:
            return await self._answer(500, {"meta": {"error": "internal"}}), ""
        site_id = self._authenticate(request)
        if site_id is None:
            return await self._answer(401, {"meta": {"error": "unauthorized"}}), ""
        marker = faults.malformed_marker
        if faults.malformed_all or (marker and marker.encode() in await request.body()):
            return await self._answer(400, {"errors": [{"reason": "malformed", "field": "body",
                                                        "message": "the request is malformed"}]}), ""
        return None, site_id

    async def _json(self, request: Request, limit: int) -> Any:
        raw = await request.body()
        if len(raw) > limit:
            raise ItemError("body", f"request is over {limit} bytes", "too_large")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ItemError("body", "malformed JSON") from exc

    # --- rules ---------------------------------------------------------------------------------

    def _check_person_id(self, person_id: str) -> None:
        if not person_id or len(person_id.encode()) > MAX_PERSON_ID_BYTES:
            raise ItemError("identifiers.id", f"person id must be 1..{MAX_PERSON_ID_BYTES} bytes")

    def _check_attributes(self, site_id: str, person_id: str, attributes: Any) -> None:
        if not isinstance(attributes, dict):
            raise ItemError("attributes", "attributes must be an object")
        for name, value in attributes.items():
            if len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
                raise ItemError(f"attributes.{name[:20]}", "attribute name is over 150 bytes")
            if _size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
                raise ItemError(f"attributes.{name}", "attribute value is over 1000 bytes")
        merged = set(self.people.get((site_id, person_id), {})) | set(attributes)
        if len(merged) > MAX_ATTRIBUTES:
            raise ItemError("attributes", f"a person has at most {MAX_ATTRIBUTES} attributes")

    def _check_event(self, name: Any, data: Any, event_id: Any, event_type: str) -> None:
        if event_type not in ("event", "page", "screen"):
            raise ItemError("type", "type must be event, page or screen")
        if not isinstance(name, str) or not name:
            raise ItemError("name", "name is required")
        if len(name.encode()) > MAX_EVENT_NAME_BYTES:
            raise ItemError("name", f"event name is over {MAX_EVENT_NAME_BYTES} bytes")
        if data is not None and (not isinstance(data, dict) or _size(data) > MAX_EVENT_DATA_BYTES):
            raise ItemError("data", f"data must be an object of at most {MAX_EVENT_DATA_BYTES} bytes")
        if event_id is not None:
            try:
                ULID.from_str(str(event_id))
            except ValueError as exc:
                raise ItemError("id", "id must be a ULID") from exc

    def _record_identify(self, site_id: str, person_id: str, attributes: dict[str, Any]) -> None:
        self.identify_count += 1
        self.people.setdefault((site_id, person_id), {}).update(attributes)

    def _record_event(self, event: ReceivedEvent) -> None:
        if event.event_id is not None:
            if event.event_id in self.events:
                self.duplicates[event.event_id] += 1
                return
            self.events[event.event_id] = event
        self.event_order.append(event)

    def _timestamp(self, value: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ItemError("timestamp", "timestamp must be unix seconds")
        return value

    # --- v1 ------------------------------------------------------------------------------------

    async def _v1(self, request: Request, handle: Any) -> Response:
        refused, site_id = await self._gate(request)
        if refused is not None:
            return refused
        try:
            body = await self._json(request, 1024 * 1024)
            if not isinstance(body, dict):
                raise ItemError("body", "body must be an object")
            handle(site_id, body)
        except ItemError as error:
            return await self._answer(400, {"meta": {"errors": [f"{error.field}: {error.message}"]}})
        return await self._answer(200)

    async def _v1_identify(self, request: Request) -> Response:
        person_id = request.path_params["person_id"]

        def handle(site_id: str, body: dict[str, Any]) -> None:
            self._check_person_id(person_id)
            attributes = {k: v for k, v in body.items() if not k.startswith("_")}
            self._check_attributes(site_id, person_id, attributes)
            self._record_identify(site_id, person_id, attributes)

        return await self._v1(request, handle)

    async def _v1_event(self, request: Request) -> Response:
        person_id = request.path_params["person_id"]

        def handle(site_id: str, body: dict[str, Any]) -> None:
            self._check_person_id(person_id)
            self._accept_v1_event(site_id, f"id:{person_id}", body)

        return await self._v1(request, handle)

    async def _v1_anonymous_event(self, request: Request) -> Response:
        def handle(site_id: str, body: dict[str, Any]) -> None:
            anonymous_id = body.get("anonymous_id")
            person = f"anon:{anonymous_id}" if anonymous_id else "anon:"
            self._accept_v1_event(site_id, person, body)

        return await self._v1(request, handle)

    def _accept_v1_event(self, site_id: str, person: str, body: dict[str, Any]) -> None:
        event_type = body.get("type", "event")
        self._check_event(body.get("name"), body.get("data"), body.get("id"), event_type)
        self._record_event(ReceivedEvent(
            body.get("id"), site_id, person, body["name"], event_type, body.get("data") or {},
            self._timestamp(body.get("timestamp")), "v1",
        ))

    # --- v2 ------------------------------------------------------------------------------------

    async def _v2_batch(self, request: Request) -> Response:
        refused, site_id = await self._gate(request)
        if refused is not None:
            return refused
        try:
            body = await self._json(request, MAX_REQUEST_BYTES)
            if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
                raise ItemError("batch", "body must be {\"batch\": [...]}")
        except ItemError as error:
            return await self._answer(400, {"errors": [{"reason": error.reason, "field": error.field,
                                                        "message": error.message}]})
        errors = []
        for index, item in enumerate(body["batch"]):
            try:
                self._v2_item(site_id, item)
            except ItemError as error:
                errors.append({"batch_index": index, "reason": error.reason, "field": error.field,
                               "message": error.message})
        if errors:
            return await self._answer(207, {"errors": errors})
        return await self._answer(200)

    def _v2_item(self, site_id: str, item: Any) -> None:
        if not isinstance(item, dict):
            raise ItemError("", "an item must be an object")
        if _size(item) > MAX_ITEM_BYTES:
            raise ItemError("", f"item is over {MAX_ITEM_BYTES} bytes", "too_large")
        if item.get("type") != "person":
            raise ItemError("type", "only person operations are supported by this fake")
        action = item.get("action")
        if action not in V2_ACTIONS:
            raise ItemError("action", f"unknown action {action!r}")
        identifiers = item.get("identifiers")
        anonymous_id = item.get("anonymous_id")
        person_id: str | None = None
        if identifiers is not None:
            if not isinstance(identifiers, dict) or len(identifiers) != 1 or \
                    next(iter(identifiers)) not in ("id", "email", "cio_id"):
                raise ItemError("identifiers", "identifiers must hold exactly one of id, email, cio_id")
            person_id = str(next(iter(identifiers.values())))
            self._check_person_id(person_id)
        elif not (anonymous_id and action in ("event", "page", "screen")):
            raise ItemError("identifiers", "identifiers is required")
        attributes = item.get("attributes") or {}
        timestamp = self._timestamp(item.get("timestamp"))
        if action == "identify":
            assert person_id is not None
            self._check_attributes(site_id, person_id, attributes)
            self._record_identify(site_id, person_id, attributes)
            return
        if action in ("event", "page", "screen"):
            self._check_event(item.get("name"), attributes, item.get("id"), action)
            person = f"id:{person_id}" if person_id is not None else f"anon:{anonymous_id}"
            self._record_event(ReceivedEvent(item.get("id"), site_id, person, item["name"], action,
                                             attributes, timestamp, "v2"))

    # --- inspection and control ----------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "events": [event.__dict__ for event in self.event_order],
            "unique_events": len(self.events),
            "duplicates": sum(self.duplicates.values()),
            "people": {f"{site}:{person}": attrs for (site, person), attrs in self.people.items()},
            "identify_calls": self.identify_count,
            "requests": self.requests,
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "max_requests_per_second": self.max_requests_per_second,
        }

    async def _inspect(self, request: Request) -> Response:
        summary = self.summary()
        if request.query_params.get("events") == "0":
            summary.pop("events")
        return Response(orjson.dumps(summary), media_type="application/json")

    async def _set_faults(self, request: Request) -> Response:
        """{"outage": bool, "force": {"status", "times", "retry_after"}, "throttle_ratio", ...}."""
        body = orjson.loads(await request.body() or b"{}")
        if body.get("clear"):
            self.clear_faults()
        force = body.pop("force", None)
        if force:
            self.force(int(force["status"]), int(force.get("times", 1)), force.get("retry_after"))
        for name in ("outage", "throttle_ratio", "error_ratio", "retry_after", "slow_next",
                     "slow_seconds", "latency", "rate_cap", "malformed_all", "malformed_marker"):
            if name in body:
                setattr(self.faults, name, body[name])
        return Response(orjson.dumps({"ok": True}), media_type="application/json")

    async def _reset(self, request: Request) -> Response:
        self.reset()
        self.clear_faults()
        return Response(orjson.dumps({"ok": True}), media_type="application/json")

"""The ingest HTTP service: authenticate, validate, publish (DESIGN.md, HTTP surface)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from synergy_common.db import create_pool
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_common.http import (
    PROBLEM_JSON,
    ProblemError,
    RequestSafetyNet,
    WriteKeyAuthenticator,
    authenticate_brand,
    current_correlation_id,
    install_problem_handlers,
    ops_router,
    problem_response,
    service_unavailable,
)
from synergy_common.logging import configure_logging
from synergy_common.settings import CommonSettings

from synergy_ingest.answers import batch_answer, unwritten_problem
from synergy_ingest.brand_settings import brand_settings
from synergy_ingest.client_events import (
    AcceptedEvent,
    ClientEvent,
    EventRejected,
    accept_event,
    parse_client_event,
)
from synergy_ingest.fast_batch import (
    accept_segment_batch,
    accept_segment_track,
    decode_segment_batch,
    decode_segment_track,
    fast_batch,
    fast_event,
)
from synergy_ingest.metrics import (
    BATCH_SIZE,
    EVENTS_ACCEPTED,
    EVENTS_REJECTED,
    EVENTS_THROTTLED,
    REQUESTS,
    labelled,
)
from synergy_ingest.publish_outcome import PublishOutcome
from synergy_ingest.publisher import EventPublisher, KafkaUnavailable
from synergy_ingest.quotas import Quota, QuotaBook, quota_from_settings, retry_after_header
from synergy_ingest.request_body import parse_json, read_asgi_body
from synergy_ingest.request_context import RequestContext
from synergy_ingest.segment import segment_to_client_event
from synergy_ingest.settings import IngestSettings, default_quota


class EventAccepted(BaseModel):
    event_id: str


class BatchAccepted(BaseModel):
    index: int
    event_id: str


class BatchError(BaseModel):
    index: int
    field: str
    message: str


class BatchUnwritten(BaseModel):
    """A valid event Kafka did not acknowledge: `not_written` for certain, or `unknown`."""

    index: int
    event_id: str
    outcome: Literal["not_written", "unknown"]


class BatchAnswer(BaseModel):
    accepted: list[BatchAccepted]
    errors: list[BatchError]
    unwritten: list[BatchUnwritten] = []


class EventBatch(BaseModel):
    batch: list[ClientEvent]


@dataclass
class IngestState:
    settings: IngestSettings
    authenticator: WriteKeyAuthenticator
    publisher: EventPublisher
    pool: asyncpg.Pool
    quotas: QuotaBook
    default_quota: Quota | None
    brand_settings: BrandSettingsCache


@dataclass(slots=True)
class IncomingRequest:
    """What the handlers read of a request: its headers (first value of each), client, body stream."""

    state: IngestState
    headers: dict[str, str]
    client_ip: str | None
    receive: Receive

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> IncomingRequest:
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])
        }
        client = scope.get("client")
        return cls(scope["app"].state.ingest, headers, client[0] if client else None, receive)


Handler = Callable[[IncomingRequest], Awaitable[Response]]


class HotRoutes:
    """The event routes, served without FastAPI's routing and dependency solving (they take no
    parameters FastAPI would parse). The same handlers stay registered with FastAPI, which documents
    them and serves whatever this does not match exactly (other methods, trailing slashes)."""

    def __init__(self, routes: dict[str, tuple[Handler, object]]) -> None:
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler, route = self.routes[scope["path"]]
        scope["route"] = route
        try:
            response = await handler(IncomingRequest.from_scope(scope, receive))
        except ProblemError as exc:
            response = problem_response(
                exc.status, exc.title, exc.detail, exc.field, exc.headers, **exc.extra
            )
        await response(scope, receive, send)


class IngestApp(FastAPI):
    """FastAPI, with exact POSTs to the event routes taken before Starlette's middleware stack: they
    go through a RequestSafetyNet of their own (correlation id, unhandled errors, answers counted,
    as every other route gets from the stack) straight to HotRoutes. The stack's other layers do
    nothing for them (no body limit is configured; the safety net answers every error)."""

    hot_routes: dict[str, tuple[Handler, object]]
    hot_entry: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.hot_routes:
            scope["app"] = self
            await self.hot_entry(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class OrjsonResponse(Response):
    """A JSON answer rendered by orjson, its raw headers built directly (what Starlette's
    JSONResponse sends, without its per-request header assembly)."""

    media_type = "application/json"

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = orjson.dumps(content)
        self.background = None
        raw = [
            (b"content-length", str(len(self.body)).encode()),
            (b"content-type", _JSON if media_type is None else media_type.encode("latin-1")),
        ]
        if headers:
            raw += [
                (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
            ]
        self.raw_headers = raw


_JSON = b"application/json"


def _state(request: IncomingRequest) -> IngestState:
    return request.state


async def _request_context(request: IncomingRequest, body_write_key: str | None = None) -> RequestContext:
    state = request.state
    brand_id = await authenticate_brand(
        state.authenticator, request.headers.get("authorization"), body_write_key
    )
    return RequestContext(
        brand_id=brand_id,
        received_at=datetime.now(UTC),
        correlation_id=current_correlation_id(),
        user_agent=request.headers.get("user-agent"),
        client_ip=request.client_ip,
    )


class BrandSettingsCache:
    """Brand settings for `ttl_seconds` after they were read, at most `max_brands` of them. A dict and a
    deadline rather than cachetools' TTLCache: it is read on every request, and TTLCache's timer costs
    ~2 us a lookup. When full it starts over (brands are few)."""

    def __init__(self, ttl_seconds: float, max_brands: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_brands
        self._entries: dict[str, tuple[dict[str, Any], float]] = {}

    def get(self, brand_id: str, now: float) -> dict[str, Any] | None:
        entry = self._entries.get(brand_id)
        return entry[0] if entry is not None and now < entry[1] else None

    def put(self, brand_id: str, settings: dict[str, Any], now: float) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[brand_id] = (settings, now + self._ttl)


async def _brand_settings(state: IngestState, brand_id: str) -> dict[str, Any]:
    try:
        settings = await brand_settings(state.pool, brand_id)
    except (OSError, asyncpg.PostgresError):
        return {}  # the default quota applies until Postgres answers again
    state.brand_settings.put(brand_id, settings, time.monotonic())
    return settings


async def _admit(request: IncomingRequest, brand_id: str, events: int) -> None:
    """429 with Retry-After when the brand is over its quota; other brands have their own buckets."""
    state = _state(request)
    if events == 0:
        return
    now = time.monotonic()
    settings = state.brand_settings.get(brand_id, now)
    if settings is None:
        settings = await _brand_settings(state, brand_id)
        now = time.monotonic()
    quota = quota_from_settings(settings, state.default_quota)
    wait = state.quotas.admit(brand_id, quota, events, now)
    if wait > 0:
        labelled(EVENTS_THROTTLED, brand_id).inc(events)
        raise ProblemError(
            429,
            "Too many events",
            f"this brand is over its quota of {quota.events_per_second:g} events/s" if quota else None,
            headers={"Retry-After": retry_after_header(wait)},
        )


async def _publish(request: IncomingRequest, accepted: list[AcceptedEvent]) -> PublishOutcome:
    """What Kafka did with each event. Raises a 503 when nothing could be handed to the producer."""
    state = _state(request)
    try:
        outcome = await state.publisher.publish(accepted)  # each accepted event is its record
    except KafkaUnavailable as exc:
        labelled(EVENTS_REJECTED, "kafka_unavailable").inc(len(accepted))
        problem = service_unavailable("Kafka", exc, state.settings.retry_after_seconds)
        problem.detail = f"nothing was accepted; {problem.detail}"
        raise problem from exc
    written_by_type: dict[str, int] = {}
    for index in outcome.written:
        event_type = accepted[index].type
        written_by_type[event_type] = written_by_type.get(event_type, 0) + 1
    for event_type, count in written_by_type.items():
        labelled(EVENTS_ACCEPTED, event_type).inc(count)
    if outcome.refused:
        labelled(EVENTS_REJECTED, "kafka_unavailable").inc(len(outcome.refused))
    if outcome.unknown:
        labelled(EVENTS_REJECTED, "kafka_outcome_unknown").inc(len(outcome.unknown))
    return outcome


def _retry_after(request: IncomingRequest) -> dict[str, str]:
    return {"Retry-After": str(_state(request).settings.retry_after_seconds)}


async def _publish_one(request: IncomingRequest, event: AcceptedEvent) -> None:
    outcome = await _publish(request, [event])
    if not outcome.all_written:
        problem = unwritten_problem(outcome, [event.event_id])
        raise ProblemError(
            503,
            problem.pop("title"),
            problem.pop("detail"),
            headers=_retry_after(request),
            **{k: v for k, v in problem.items() if k not in ("type", "status")},
        )


def _rejection_problem(rejected: EventRejected) -> ProblemError:
    labelled(EVENTS_REJECTED, rejected.reason).inc()
    title = "Forbidden" if rejected.status == 403 else "Invalid event"
    return ProblemError(rejected.status, title, f"{rejected.field}: {rejected.message}", field=rejected.field)


@dataclass
class BatchOutcome:
    events: list[tuple[int, AcceptedEvent]]
    errors: list[BatchError]
    forbidden: int = 0


def _build_batch(items: Sequence[Any], accept: Callable[[Any], AcceptedEvent]) -> BatchOutcome:
    outcome = BatchOutcome([], [])
    for index, item in enumerate(items):
        try:
            outcome.events.append((index, accept(item)))
        except EventRejected as rejected:
            labelled(EVENTS_REJECTED, rejected.reason).inc()
            outcome.forbidden += rejected.status == 403
            outcome.errors.append(BatchError(index=index, field=rejected.field, message=rejected.message))
    return outcome


async def _answer_batch(
    request: IncomingRequest, brand_id: str, batch: BatchOutcome, all_ok_status: int
) -> Response:
    BATCH_SIZE.observe(len(batch.events) + len(batch.errors))
    published: PublishOutcome | None = None
    if batch.events:
        await _admit(request, brand_id, len(batch.events))
        published = await _publish(request, [event for _, event in batch.events])
    status, body = batch_answer(
        [(index, event.event_id) for index, event in batch.events],
        [error.model_dump() for error in batch.errors],
        batch.forbidden,
        published,
        all_ok_status,
    )
    if status >= 400:
        headers = _retry_after(request) if status == 503 else None
        return OrjsonResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
    return OrjsonResponse(body, status_code=status)


def _batch_items(body: Any, max_events: int) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise ProblemError(422, "Invalid batch", 'the body must be {"batch": [event, ...]}', field="batch")
    items: list[Any] = body["batch"]
    if not items:
        raise ProblemError(422, "Invalid batch", "the batch is empty", field="batch")
    if len(items) > max_events:
        raise ProblemError(
            413, "Batch too large", f"a batch may hold at most {max_events} events", field="batch"
        )
    return items


def _body_write_key(body: Any) -> str | None:
    return _write_key(body.get("writeKey") if isinstance(body, dict) else None)


def _write_key(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


SEGMENT_FIELD_NAMES = {
    "identifiers.id": "userId",
    "identifiers.anonymous_id": "anonymousId",
    "event_id": "messageId",
}


def _segment_field(field: str, message_type: str | None) -> str:
    """Our field name in a rejection, as the Segment message spells it."""
    if field in SEGMENT_FIELD_NAMES:
        return SEGMENT_FIELD_NAMES[field]
    if field == "name" and message_type == "track":
        return "event"
    if field == "data" or field.startswith("data."):
        return ("traits" if message_type == "identify" else "properties") + field[len("data") :]
    return field


def _segment_acceptor(
    context: RequestContext, max_event_bytes: int, route_type: str | None
) -> Callable[[Any], AcceptedEvent]:
    def accept(message: Any) -> AcceptedEvent:
        mapped = segment_to_client_event(message, route_type)
        message_context = RequestContext(
            brand_id=context.brand_id,
            received_at=context.received_at,
            correlation_id=context.correlation_id,
            user_agent=mapped.user_agent or context.user_agent,
            client_ip=mapped.client_ip or context.client_ip,
            source="segment",
        )
        try:
            return accept_event(parse_client_event(mapped.client_event), message_context, max_event_bytes)
        except EventRejected as rejected:
            rejected.field = _segment_field(rejected.field, mapped.client_event.get("type"))
            raise

    return accept


def create_app(settings: IngestSettings | None = None, common: CommonSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    common = common or CommonSettings()
    log = configure_logging("ingest", common.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(common.database_url, min_size=0, max_size=5)
        publisher = EventPublisher(
            common.kafka_bootstrap_servers, settings.publish_timeout_seconds, settings.producer_linger_ms
        )
        publisher.start()
        app.state.ingest = IngestState(
            settings,
            WriteKeyAuthenticator(pool, "ingest"),
            publisher,
            pool,
            QuotaBook(settings.workers),
            default_quota(settings),
            BrandSettingsCache(settings.brand_settings_ttl_seconds),
        )
        if not await publisher.wait_started(timeout=10):
            log.warning("kafka_not_reachable_yet", bootstrap=common.kafka_bootstrap_servers)
        log.info("ingest_started", topic=publisher.topic, port=settings.port)
        try:
            yield
        finally:
            await publisher.stop()
            await pool.close()
            log.info("ingest_stopped")

    app = IngestApp(
        title="Synergy Engine ingest",
        version="1",
        description="Authenticate, validate and durably publish behavioural events.",
        lifespan=lifespan,
        # Metrics are Prometheus'; FastAPI's OpenTelemetry hooks cost a provider lookup per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    hot: dict[str, tuple[Handler, object]] = {}  # filled by the route registrations below
    app.hot_routes = hot
    app.hot_entry = RequestSafetyNet(HotRoutes(hot), REQUESTS)
    install_problem_handlers(app, REQUESTS)

    async def kafka_ready() -> bool:
        return bool(app.state.ingest.publisher.ready)

    async def postgres_ready() -> bool:
        return await app.state.ingest.pool.fetchval("SELECT 1") == 1

    app.include_router(ops_router({"kafka": kafka_ready, "postgres": postgres_ready}))
    _add_event_routes(app, settings, hot)
    _add_segment_routes(app, settings, hot)
    _document_request_bodies(app)
    return app


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _route(
    app: FastAPI, hot: dict[str, tuple[Handler, object]], path: str, handler: Handler, **documentation: Any
) -> None:
    """Registers `handler` with FastAPI (OpenAPI, and the fallback for what HotRoutes does not match)
    and with HotRoutes for exact POSTs to `path`."""

    async def endpoint(request: Request) -> Response:
        return await handler(IncomingRequest.from_scope(request.scope, request.receive))

    app.add_api_route(path, endpoint, methods=["POST"], **documentation)
    route = next(r for r in reversed(app.router.routes) if getattr(r, "path", None) == path)
    hot[path] = (handler, route)


def _add_event_routes(app: FastAPI, settings: IngestSettings, hot: dict[str, tuple[Handler, object]]) -> None:
    async def post_event(request: IncomingRequest) -> Response:
        context = await _request_context(request)
        body = await read_asgi_body(request.headers, request.receive, settings.max_event_bytes)
        fast = fast_event(body, context, settings.max_event_bytes)
        if fast is not None:
            BATCH_SIZE.observe(1)
            event = fast
        else:  # the strict path decides, and names the field
            parsed = parse_json(body)
            BATCH_SIZE.observe(1)
            try:
                event = accept_event(parse_client_event(parsed), context, settings.max_event_bytes)
            except EventRejected as rejected:
                raise _rejection_problem(rejected) from rejected
        await _admit(request, context.brand_id, 1)
        await _publish_one(request, event)
        return OrjsonResponse(
            {"event_id": event.event_id},
            status_code=202,
            headers={"X-Correlation-ID": context.correlation_id},
        )

    _route(
        app,
        hot,
        "/v1/events",
        post_event,
        name="post_event",
        status_code=202,
        response_model=EventAccepted,
        tags=["events"],
        openapi_extra=_body_doc(ClientEvent),
    )

    async def post_batch(request: IncomingRequest) -> Response:
        context = await _request_context(request)
        body = await read_asgi_body(request.headers, request.receive, settings.max_batch_bytes)
        fast = fast_batch(body, context, settings.max_batch_events, settings.max_event_bytes)
        if fast is not None:
            outcome = BatchOutcome(list(enumerate(fast)), [])
        else:  # some event is refused, or needs what only the strict path does: it decides them all
            items = _batch_items(parse_json(body), settings.max_batch_events)
            outcome = _build_batch(
                items, lambda item: accept_event(parse_client_event(item), context, settings.max_event_bytes)
            )
        return await _answer_batch(request, context.brand_id, outcome, 202)

    _route(
        app,
        hot,
        "/v1/events/batch",
        post_batch,
        name="post_batch",
        status_code=202,
        response_model=BatchAnswer,
        tags=["events"],
        responses={207: {"model": BatchAnswer}},
        openapi_extra=_body_doc(EventBatch),
    )


def _add_segment_routes(
    app: FastAPI, settings: IngestSettings, hot: dict[str, tuple[Handler, object]]
) -> None:
    async def segment_single(request: IncomingRequest, route_type: str) -> Response:
        raw = await read_asgi_body(
            request.headers, request.receive, settings.max_event_bytes, any_content_type=True
        )
        message = decode_segment_track(raw) if route_type == "track" else None
        event = None
        if message is not None:
            context = await _request_context(request, _write_key(message.writeKey))
            event = accept_segment_track(message, context, settings.max_event_bytes)
        if event is None:  # the strict path decides, and names the field
            body = parse_json(raw)
            context = await _request_context(request, _body_write_key(body))
            if isinstance(body, dict):
                body = {k: v for k, v in body.items() if k not in ("writeKey", "sentAt")}
            try:
                event = _segment_acceptor(context, settings.max_event_bytes, route_type)(body)
            except EventRejected as rejected:
                raise _rejection_problem(rejected) from rejected
        BATCH_SIZE.observe(1)
        await _admit(request, context.brand_id, 1)
        await _publish_one(request, event)
        return OrjsonResponse({"success": True, "event_id": event.event_id}, status_code=200)

    def register(route_type: str) -> None:
        async def handler(request: IncomingRequest) -> Response:
            return await segment_single(request, route_type)

        _route(
            app,
            hot,
            f"/v1/{route_type}",
            handler,
            tags=["segment"],
            name=f"segment_{route_type}",
            summary=f"Segment-compatible {route_type}",
            response_model=EventAccepted,
        )

    for route_type in ("track", "identify", "page", "screen"):
        register(route_type)

    async def segment_batch(request: IncomingRequest) -> Response:
        raw = await read_asgi_body(
            request.headers, request.receive, settings.max_batch_bytes, any_content_type=True
        )
        batch = decode_segment_batch(raw)
        if batch is not None:
            context = await _request_context(request, _write_key(batch.writeKey))
            fast = accept_segment_batch(
                batch, context, settings.max_segment_batch_events, settings.max_event_bytes
            )
            if fast is not None:
                return await _answer_batch(
                    request, context.brand_id, BatchOutcome(list(enumerate(fast)), []), 200
                )
        # some message is refused, or needs what only the strict path does: it decides them all
        body = parse_json(raw)
        context = await _request_context(request, _body_write_key(body))
        items = _batch_items(body, settings.max_segment_batch_events)
        outcome = _build_batch(items, _segment_acceptor(context, settings.max_event_bytes, None))
        return await _answer_batch(request, context.brand_id, outcome, 200)

    _route(
        app,
        hot,
        "/v1/batch",
        segment_batch,
        name="segment_batch",
        tags=["segment"],
        summary="Segment-compatible batch",
        response_model=BatchAnswer,
    )


def _document_request_bodies(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ClientEvent, EventBatch):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# How long an idle keep-alive connection stays open. Longer than the idle expiry of common HTTP clients
# (httpx and Node's agents 5 s, aiohttp 15 s; uvicorn's own default is 5 s too): a server that closes
# a connection just as the client reuses it resets a POST in flight, and a client cannot know whether
# to resend it. nginx's default.
KEEP_ALIVE_SECONDS = 75


def _listening_socket(port: int) -> socket.socket:
    """A socket on `port` that other ingest processes bind too (SO_REUSEPORT): the kernel spreads the
    connections over the processes, instead of waking them all on a shared socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: IngestSettings, sock: socket.socket | None = None) -> None:
    """One ingest process: its own producer, key cache and share of each brand's quota."""
    import uvicorn

    app = create_app(settings)
    tune_garbage_collector()
    config = uvicorn.Config(
        app,
        host="0.0.0.0",
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)


def _serve_on_shared_port(port: int) -> None:
    os.setpgrp()  # a signal to the parent's group reaches a worker once, forwarded by the parent
    serve(IngestSettings(), _listening_socket(port))


def main() -> None:
    settings = IngestSettings()
    if settings.workers <= 1:
        serve(settings)
        return
    processes = [
        multiprocessing.get_context("spawn").Process(
            target=_serve_on_shared_port, args=(settings.port,), name=f"ingest-{i}"
        )
        for i in range(settings.workers)
    ]
    for process in processes:
        process.start()

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while any(process.is_alive() for process in processes):
        for process in processes:
            process.join(0.5)
            if not process.is_alive() and not stopping:
                stop(signal.SIGTERM, None)  # one worker died: stop all, so the supervisor restarts ingest
    # uvicorn re-raises the stop signal after its graceful shutdown: a worker ended by it ended cleanly.
    clean = {0, -signal.SIGTERM, -signal.SIGINT} if stopping else {0}
    crashed = [p for p in processes if p.exitcode not in clean]
    sys.exit(1 if crashed or not stopping else 0)

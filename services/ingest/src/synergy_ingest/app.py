"""The ingest HTTP service: authenticate, validate, publish (DESIGN.md, HTTP surface)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from synergy_common.db import create_pool
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_common.http import (
    ProblemError,
    WriteKeyAuthenticator,
    authenticate_brand,
    current_correlation_id,
    install_problem_handlers,
    ops_router,
    service_unavailable,
)
from synergy_common.logging import configure_logging
from synergy_common.settings import CommonSettings

from synergy_ingest.client_events import ClientEvent, Envelope, EventRejected, build_envelope
from synergy_ingest.metrics import BATCH_SIZE, EVENTS_ACCEPTED, EVENTS_REJECTED, REQUESTS
from synergy_ingest.publisher import EventPublisher, KafkaUnavailable
from synergy_ingest.request_body import read_json_body
from synergy_ingest.request_context import RequestContext
from synergy_ingest.segment import segment_to_client_event
from synergy_ingest.settings import IngestSettings


class EventAccepted(BaseModel):
    event_id: str


class BatchAccepted(BaseModel):
    index: int
    event_id: str


class BatchError(BaseModel):
    index: int
    field: str
    message: str


class BatchAnswer(BaseModel):
    accepted: list[BatchAccepted]
    errors: list[BatchError]


class EventBatch(BaseModel):
    batch: list[ClientEvent]


@dataclass
class IngestState:
    settings: IngestSettings
    authenticator: WriteKeyAuthenticator
    publisher: EventPublisher
    pool: asyncpg.Pool


class RequestMetrics:
    """Counts every answer by route template and status, 4xx and 5xx included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            REQUESTS.labels(getattr(route, "path", "unmatched"), str(status)).inc()


def _state(request: Request) -> IngestState:
    state: IngestState = request.app.state.ingest
    return state


async def _request_context(request: Request, body_write_key: str | None = None) -> RequestContext:
    state = _state(request)
    brand_id = await authenticate_brand(
        state.authenticator, request.headers.get("authorization"), body_write_key
    )
    return RequestContext(
        brand_id=brand_id,
        received_at=datetime.now(UTC),
        correlation_id=current_correlation_id(),
        user_agent=request.headers.get("user-agent"),
        client_ip=request.client.host if request.client else None,
    )


async def _publish(request: Request, envelopes: list[Envelope]) -> None:
    try:
        await _state(request).publisher.publish(envelopes)
    except KafkaUnavailable as exc:
        EVENTS_REJECTED.labels("kafka_unavailable").inc(len(envelopes))
        problem = service_unavailable("Kafka", exc, _state(request).settings.retry_after_seconds)
        problem.detail = f"nothing was accepted; {problem.detail}"
        raise problem from exc
    for envelope in envelopes:
        EVENTS_ACCEPTED.labels(envelope.type).inc()


def _rejection_problem(rejected: EventRejected) -> ProblemError:
    EVENTS_REJECTED.labels(rejected.reason).inc()
    title = "Forbidden" if rejected.status == 403 else "Invalid event"
    return ProblemError(rejected.status, title, f"{rejected.field}: {rejected.message}", field=rejected.field)


@dataclass
class BatchOutcome:
    envelopes: list[tuple[int, Envelope]]
    errors: list[BatchError]
    forbidden: int = 0


def _build_batch(items: list[Any], build: Callable[[Any], Envelope]) -> BatchOutcome:
    outcome = BatchOutcome([], [])
    for index, item in enumerate(items):
        try:
            outcome.envelopes.append((index, build(item)))
        except EventRejected as rejected:
            EVENTS_REJECTED.labels(rejected.reason).inc()
            outcome.forbidden += rejected.status == 403
            outcome.errors.append(BatchError(index=index, field=rejected.field, message=rejected.message))
    return outcome


async def _answer_batch(request: Request, outcome: BatchOutcome, all_ok_status: int) -> JSONResponse:
    BATCH_SIZE.observe(len(outcome.envelopes) + len(outcome.errors))
    if outcome.envelopes:
        await _publish(request, [envelope for _, envelope in outcome.envelopes])
    answer = BatchAnswer(
        accepted=[BatchAccepted(index=i, event_id=e.event_id) for i, e in outcome.envelopes],
        errors=outcome.errors,
    )
    if not outcome.errors:
        status = all_ok_status
    elif outcome.envelopes:
        status = 207
    else:
        status = 403 if outcome.forbidden == len(outcome.errors) else 422
    headers = {"content-type": "application/problem+json"} if status >= 400 else None
    body = answer.model_dump()
    if status >= 400:
        first = outcome.errors[0]
        body = {
            "type": "about:blank",
            "title": "No event accepted",
            "status": status,
            "detail": f"batch[{first.index}].{first.field}: {first.message}",
            "field": f"batch[{first.index}].{first.field}",
            **body,
        }
    return JSONResponse(body, status_code=status, headers=headers)


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
    key = body.get("writeKey") if isinstance(body, dict) else None
    return key if isinstance(key, str) and key else None


def _segment_builder(
    context: RequestContext, max_event_bytes: int, route_type: str | None
) -> Callable[[Any], Envelope]:
    def build(message: Any) -> Envelope:
        mapped = segment_to_client_event(message, route_type)
        message_context = RequestContext(
            brand_id=context.brand_id,
            received_at=context.received_at,
            correlation_id=context.correlation_id,
            user_agent=mapped.user_agent or context.user_agent,
            client_ip=mapped.client_ip or context.client_ip,
            source="segment",
        )
        return build_envelope(mapped.client_event, message_context, max_event_bytes)

    return build


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
        app.state.ingest = IngestState(settings, WriteKeyAuthenticator(pool, "ingest"), publisher, pool)
        if not await publisher.wait_started(timeout=10):
            log.warning("kafka_not_reachable_yet", bootstrap=common.kafka_bootstrap_servers)
        log.info("ingest_started", topic=publisher.topic, port=settings.port)
        try:
            yield
        finally:
            await publisher.stop()
            await pool.close()
            log.info("ingest_stopped")

    app = FastAPI(
        title="Synergy Engine ingest",
        version="1",
        description="Authenticate, validate and durably publish behavioural events.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.add_middleware(RequestMetrics)

    async def kafka_ready() -> bool:
        return bool(app.state.ingest.publisher.ready)

    async def postgres_ready() -> bool:
        return await app.state.ingest.pool.fetchval("SELECT 1") == 1

    app.include_router(ops_router({"kafka": kafka_ready, "postgres": postgres_ready}))
    _add_event_routes(app, settings)
    _add_segment_routes(app, settings)
    _document_request_bodies(app)
    return app


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _add_event_routes(app: FastAPI, settings: IngestSettings) -> None:
    @app.post(
        "/v1/events",
        status_code=202,
        response_model=EventAccepted,
        tags=["events"],
        openapi_extra=_body_doc(ClientEvent),
    )
    async def post_event(request: Request) -> JSONResponse:
        context = await _request_context(request)
        body = await read_json_body(request, settings.max_event_bytes)
        BATCH_SIZE.observe(1)
        try:
            envelope = build_envelope(body, context, settings.max_event_bytes)
        except EventRejected as rejected:
            raise _rejection_problem(rejected) from rejected
        await _publish(request, [envelope])
        return JSONResponse(
            {"event_id": envelope.event_id},
            status_code=202,
            headers={"X-Correlation-ID": context.correlation_id},
        )

    @app.post(
        "/v1/events/batch",
        status_code=202,
        response_model=BatchAnswer,
        tags=["events"],
        responses={207: {"model": BatchAnswer}},
        openapi_extra=_body_doc(EventBatch),
    )
    async def post_batch(request: Request) -> JSONResponse:
        context = await _request_context(request)
        body = await read_json_body(request, settings.max_batch_bytes)
        items = _batch_items(body, settings.max_batch_events)
        outcome = _build_batch(items, lambda item: build_envelope(item, context, settings.max_event_bytes))
        return await _answer_batch(request, outcome, 202)


def _add_segment_routes(app: FastAPI, settings: IngestSettings) -> None:
    async def segment_single(request: Request, route_type: str) -> JSONResponse:
        body = await read_json_body(request, settings.max_event_bytes, also_text_plain=True)
        context = await _request_context(request, _body_write_key(body))
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ("writeKey", "sentAt")}
        try:
            envelope = _segment_builder(context, settings.max_event_bytes, route_type)(body)
        except EventRejected as rejected:
            raise _rejection_problem(rejected) from rejected
        BATCH_SIZE.observe(1)
        await _publish(request, [envelope])
        return JSONResponse({"success": True, "event_id": envelope.event_id}, status_code=200)

    def register(route_type: str) -> None:
        async def handler(request: Request) -> JSONResponse:
            return await segment_single(request, route_type)

        app.add_api_route(
            f"/v1/{route_type}",
            handler,
            methods=["POST"],
            tags=["segment"],
            name=f"segment_{route_type}",
            summary=f"Segment-compatible {route_type}",
            response_model=EventAccepted,
        )

    for route_type in ("track", "identify", "page", "screen"):
        register(route_type)

    @app.post("/v1/batch", tags=["segment"], summary="Segment-compatible batch", response_model=BatchAnswer)
    async def segment_batch(request: Request) -> JSONResponse:
        body = await read_json_body(request, settings.max_batch_bytes, also_text_plain=True)
        context = await _request_context(request, _body_write_key(body))
        items = _batch_items(body, settings.max_segment_batch_events)
        outcome = _build_batch(items, _segment_builder(context, settings.max_event_bytes, None))
        return await _answer_batch(request, outcome, 200)


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


def main() -> None:
    import uvicorn

    settings = IngestSettings()
    if settings.workers > 1:
        # Ingest is stateless: each process has its own producer and key cache.
        uvicorn.run(
            "synergy_ingest.app:create_app", factory=True, workers=settings.workers, host="0.0.0.0",
            port=settings.port, log_level="warning", timeout_graceful_shutdown=10,
        )
        return
    app = create_app(settings)
    tune_garbage_collector()
    uvicorn.run(
        app,
        host="0.0.0.0",
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )

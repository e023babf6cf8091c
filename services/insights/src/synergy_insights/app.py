"""The insights HTTP service: Customer.io webhooks in, predictions read API out (port 8001)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Header, Path, Request
from fastapi.responses import JSONResponse
from synergy_common.brands import CredentialCipher, EncryptionKeyMissing
from synergy_common.db import create_pool
from synergy_common.http import (
    ProblemError,
    WriteKeyAuthenticator,
    authenticate_brand,
    install_problem_handlers,
    ops_router,
    service_unavailable,
)
from synergy_common.logging import configure_logging

from synergy_insights import metrics
from synergy_insights.cache import InsightsCache
from synergy_insights.invalidation import InvalidationListener
from synergy_insights.openapi import WEBHOOK_REQUEST_BODY, WEBHOOK_RESPONSES
from synergy_insights.payloads import PayloadRejected, parse_webhook, reject_nul_characters
from synergy_insights.processing import (
    BrandResolver,
    Outcome,
    RetryLoop,
    UnknownDefaultBrand,
    WebhookProcessor,
    type_label,
)
from synergy_insights.publisher import InsightsPublisher
from synergy_insights.settings import InsightsSettings
from synergy_insights.signature import SignatureRejected, SignatureVerifier
from synergy_insights.store import (
    DATABASE_UNAVAILABLE,
    BrandDirectory,
    KnownBrand,
    ProfileStore,
    ReplayedSignature,
    WebhookLog,
)

WEBHOOK_PATHS = ("/webhooks/customer-io", "/api/webhooks/customer-io")
JSON_MEDIA_TYPES = ("application/json",)


@dataclass
class Runtime:
    settings: InsightsSettings
    pool: asyncpg.Pool
    verifier: SignatureVerifier
    brands: BrandDirectory
    brand_resolver: BrandResolver
    webhook_log: WebhookLog
    profiles: ProfileStore
    publisher: InsightsPublisher
    processor: WebhookProcessor
    retry_loop: RetryLoop
    cache: InsightsCache
    authenticator: WriteKeyAuthenticator


def _unavailable(what: str, exc: BaseException) -> ProblemError:
    return service_unavailable(what, exc)


async def read_body_within(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it grows past `limit`, whatever Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, "Body too large", f"the body is over {limit} bytes", field="body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ProblemError(413, "Body too large", f"the body is over {limit} bytes", field="body")
    return bytes(body)


def require_json_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES and not media_type.endswith("+json"):
        raise ProblemError(
            415, "Unsupported media type", "webhooks must be sent as application/json", field="Content-Type"
        )


def create_app(
    settings: InsightsSettings | None = None,
    insights_topic: str | None = None,
    publisher: InsightsPublisher | None = None,
) -> FastAPI:
    settings = settings or InsightsSettings()
    logger = configure_logging("insights", settings.log_level)
    cache = InsightsCache(ttl_seconds=settings.seconds("insights_cache_ttl"))
    verifier = SignatureVerifier(settings.signing_keys, settings.seconds("insights_signature_tolerance"))
    state: dict[str, Runtime] = {}
    given_publisher = publisher

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # min_size=0: the service starts, and answers 503, while Postgres is down.
        pool = await create_pool(
            settings.database_url, min_size=0, max_size=settings.insights_db_pool_size, command_timeout=5
        )
        publisher = given_publisher or InsightsPublisher(
            settings.kafka_bootstrap_servers, topic=insights_topic
        )
        webhook_log = WebhookLog(pool)
        profiles = ProfileStore(pool)
        processor = WebhookProcessor(
            webhook_log,
            profiles,
            publisher,
            on_user_updated=lambda brand, user: cache.invalidate((brand, user)),
        )
        brands = BrandDirectory(
            pool,
            CredentialCipher(settings.synergy_encryption_key),
            ttl_seconds=settings.seconds("insights_brand_refresh_interval"),
        )
        brand_resolver = BrandResolver(brands, settings.insights_default_brand_id)
        retry_loop = RetryLoop(
            webhook_log,
            processor,
            interval_seconds=settings.seconds("insights_retry_interval"),
            max_backoff_seconds=settings.seconds("insights_retry_max_backoff"),
            unknown_user_horizon_seconds=settings.seconds("insights_unknown_user_horizon"),
            signature_tolerance_seconds=verifier.tolerance_seconds,
            brand_resolver=brand_resolver,
        )
        state["runtime"] = Runtime(
            settings=settings,
            pool=pool,
            verifier=verifier,
            brands=brands,
            brand_resolver=brand_resolver,
            webhook_log=webhook_log,
            profiles=profiles,
            publisher=publisher,
            processor=processor,
            retry_loop=retry_loop,
            cache=cache,
            authenticator=WriteKeyAuthenticator(pool, "insights"),
        )
        tasks = [
            asyncio.create_task(retry_loop.run_forever(), name="insights-retry-loop"),
            asyncio.create_task(
                InvalidationListener(settings.database_url, cache).run_forever(), name="insights-invalidation"
            ),
        ]
        if not verifier.configured:
            logger.warning(
                "no_webhook_signing_key",
                detail="CIO_WEBHOOK_SIGNING_KEY is not set: only brands with their own key take webhooks",
            )
        logger.info(
            "insights_started", topic=publisher.topic, default_brand=settings.insights_default_brand_id
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await publisher.stop()
            await pool.close()

    app = FastAPI(title="Synergy insights", version="1.0.0", lifespan=lifespan)
    app.state.insights_cache = cache
    install_problem_handlers(app, metrics.ANSWERS)

    def runtime() -> Runtime:
        return state["runtime"]

    async def postgres_ready() -> bool:
        return await runtime().pool.fetchval("SELECT 1", timeout=2) == 1

    async def kafka_ready() -> bool:
        return await runtime().publisher.ready()

    app.include_router(ops_router({"postgres": postgres_ready, "kafka": kafka_ready}))

    async def receive_webhook(request: Request, brand: str | None) -> JSONResponse:
        started = time.perf_counter()
        try:
            return await _receive_webhook(runtime(), request, brand)
        finally:
            metrics.REQUEST_SECONDS.observe(time.perf_counter() - started)

    webhook_route: dict[str, Any] = {
        "methods": ["POST"],
        "responses": WEBHOOK_RESPONSES,
        "openapi_extra": {"requestBody": WEBHOOK_REQUEST_BODY},
        "tags": ["webhooks"],
    }

    async def contract_path(
        request: Request,
        x_cio_signature: str | None = Header(default=None, alias="X-CIO-Signature"),
        x_cio_timestamp: str | None = Header(default=None, alias="X-CIO-Timestamp"),
    ) -> JSONResponse:
        """A Customer.io webhook: INSIGHTS_DEFAULT_BRAND_ID's, else (a single-tenant convenience) the
        brand without its own signing key that knows its user, else the only such brand; while that is
        ambiguous it is logged and answered 202 `waiting_for_brand`."""
        return await receive_webhook(request, None)

    async def brand_path(
        request: Request,
        brand: str = Path(max_length=255, description="the brand's slug or id"),
        x_cio_signature: str | None = Header(default=None, alias="X-CIO-Signature"),
        x_cio_timestamp: str | None = Header(default=None, alias="X-CIO-Timestamp"),
    ) -> JSONResponse:
        """A Customer.io webhook for the brand named in the path, verified with that brand's own signing
        keys once it has any, else with the deployment's."""
        return await receive_webhook(request, brand)

    for index, path in enumerate(WEBHOOK_PATHS):
        suffix = "" if index == 0 else "_api"
        app.add_api_route(path, contract_path, name=f"customer_io_webhook{suffix}", **webhook_route)
        app.add_api_route(
            path + "/{brand}", brand_path, name=f"customer_io_webhook_for_brand{suffix}", **webhook_route
        )

    @app.get(
        "/v1/users/{user_id}/insights",
        responses={
            401: {"description": "missing or unknown brand key"},
            404: {"description": "unknown user"},
            503: {"description": "Postgres unavailable"},
        },
        tags=["insights"],
    )
    async def user_insights(
        user_id: str = Path(min_length=1, max_length=150),
        authorization: str | None = Header(default=None),
    ) -> JSONResponse:
        """The user's latest Customer.io predictions, as stored in users.ai_features."""
        rt = runtime()
        brand_id = await authenticate_brand(rt.authenticator, authorization)
        key = (brand_id, user_id)
        hit, insights = rt.cache.get(key)
        metrics.CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()
        metrics.CACHE_HIT_RATIO.set(rt.cache.stats.hit_ratio)
        if not hit:
            generation = rt.cache.generation(key)
            try:
                insights = await rt.profiles.read_insights(int(brand_id), user_id)
            except DATABASE_UNAVAILABLE as exc:
                raise _unavailable("Postgres", exc) from exc
            # A user without a row is shown from pending webhooks, which notify nobody until they
            # are processed for a user who exists: such answers are not cached.
            if insights is not None and insights["user_known"]:
                rt.cache.put(key, insights, generation)
        if insights is None:
            raise ProblemError(404, "Unknown user", f"no user {user_id!r} in this brand", field="user_id")
        return JSONResponse(insights)

    return app


def _signature_refused(detail: str, field: str, reason: str) -> ProblemError:
    metrics.SIGNATURE_FAILURES.labels(reason).inc()
    metrics.WEBHOOKS.labels("unknown", "refused").inc()
    return ProblemError(401, "Webhook signature refused", detail, field=field, reason=reason)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


async def _signing_brand(rt: Runtime, brand: str | None) -> KnownBrand | None:
    """The brand whose keys verify this webhook: the path's, else INSIGHTS_DEFAULT_BRAND_ID's; None
    when neither names an active brand (the deployment's key verifies it then)."""
    wanted = brand or rt.settings.insights_default_brand_id
    if not wanted:
        return None
    try:
        return await rt.brands.brand(wanted)
    except DATABASE_UNAVAILABLE as exc:
        raise _unavailable("Postgres", exc) from exc


def _verifier_for(rt: Runtime, target: KnownBrand | None) -> SignatureVerifier:
    if target is None or not target.encrypted_signing_keys:
        return rt.verifier
    try:
        keys = rt.brands.signing_keys(target)
    except EncryptionKeyMissing as exc:
        raise _unavailable("Brand signing keys", exc) from exc
    return SignatureVerifier(keys, rt.verifier.tolerance_seconds)


async def _receive_webhook(rt: Runtime, request: Request, brand: str | None) -> JSONResponse:
    require_json_content_type(request.headers.get("content-type"))
    target = await _signing_brand(rt, brand)
    verifier = _verifier_for(rt, target)
    if not verifier.configured:
        raise _signature_refused(
            "no signing key is configured for this brand (synergy brands update BRAND "
            "--cio-webhook-signing-key -) nor for the deployment (CIO_WEBHOOK_SIGNING_KEY)",
            "X-CIO-Signature",
            "no_signing_key",
        )
    body = await read_body_within(request, rt.settings.insights_max_body_bytes)
    try:
        verified = verifier.verify(
            request.headers.get("x-cio-timestamp"), request.headers.get("x-cio-signature"), body, time.time()
        )
    except SignatureRejected as exc:
        raise _signature_refused(exc.detail, exc.field, exc.reason) from exc
    # Only a correctly signed request learns whether the brand it names exists.
    if brand and target is None:
        raise ProblemError(404, "Unknown brand", f"no active brand {brand!r}", field="brand")
    if not brand and target is None and rt.settings.insights_default_brand_id:
        raise ProblemError(
            404,
            "Unknown brand",
            f"INSIGHTS_DEFAULT_BRAND_ID {rt.settings.insights_default_brand_id!r} is no active brand",
            field="brand",
        )
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        metrics.WEBHOOKS.labels("unknown", "refused").inc()
        raise ProblemError(
            400, "Body is not JSON", f"the body is not valid JSON ({exc.msg})", field="body"
        ) from exc
    if not isinstance(payload, dict):
        metrics.WEBHOOKS.labels("unrecognised", "rejected").inc()
        raise ProblemError(
            422,
            "Unrecognised webhook",
            f"the body must be a JSON object, not {_json_kind(payload)}",
            field="body",
        )

    path_brand = target.brand_id if target is not None else None
    signed_at = datetime.fromtimestamp(verified.signed_at, UTC)
    grace = rt.settings.seconds("insights_inline_processing_timeout") + 30
    if b"\\u0000" in body:
        try:
            reject_nul_characters(payload)
        except PayloadRejected as exc:  # not even loggable: Postgres refuses U+0000
            metrics.WEBHOOKS.labels("unrecognised", "rejected").inc()
            raise ProblemError(422, "Unstorable webhook", exc.message, field=exc.field) from exc
    try:
        webhook = parse_webhook(payload, signed_at)
    except PayloadRejected as exc:
        # Logged (not retried) so what Customer.io sent stays visible; answered 422.
        brand_id = path_brand if path_brand is not None else await _contract_brand(rt, None)
        try:
            await rt.webhook_log.record(
                brand_id, "unrecognised", payload, None, None, verified, grace, str(exc)
            )
        except ReplayedSignature:
            pass
        except DATABASE_UNAVAILABLE as db_exc:
            raise _unavailable("Postgres", db_exc) from db_exc
        metrics.WEBHOOKS.labels("unrecognised", "rejected").inc()
        raise ProblemError(422, "Unrecognised webhook", exc.message, field=exc.field) from exc

    label = type_label(webhook)
    brand_id = path_brand if path_brand is not None else await _contract_brand(rt, webhook.user_id)
    if brand_id is None:  # not processed inline: the retry loop's from its next round
        grace = rt.settings.seconds("insights_retry_interval")
    try:
        recorded = await rt.webhook_log.record(
            brand_id, webhook.webhook_type, payload, webhook.event_id, webhook.user_id, verified, grace
        )
    except ReplayedSignature as exc:
        metrics.SIGNATURE_FAILURES.labels("replayed").inc()
        metrics.WEBHOOKS.labels(label, "refused").inc()
        raise ProblemError(
            401,
            "Webhook signature refused",
            "this signed request was already received",
            field="X-CIO-Signature",
            reason="replayed",
        ) from exc
    except DATABASE_UNAVAILABLE as exc:
        metrics.WEBHOOKS.labels(label, "unavailable").inc()
        raise _unavailable("Postgres", exc) from exc

    if recorded.log_id is None:
        metrics.WEBHOOKS.labels(label, "duplicate").inc()
        return JSONResponse({"status": "duplicate", "event_id": webhook.event_id}, status_code=200)

    assert recorded.received_at is not None
    if brand_id is None:
        metrics.WEBHOOKS.labels(label, Outcome.WAITING_FOR_BRAND.value).inc()
        answer = {"status": Outcome.WAITING_FOR_BRAND.value, "log_id": recorded.log_id}
        return JSONResponse({**answer, "event_id": webhook.event_id}, status_code=202)
    try:
        outcome = await asyncio.wait_for(
            rt.processor.process(
                brand_id,
                recorded.log_id,
                webhook,
                recorded.received_at,
                retry_in_seconds=rt.settings.seconds("insights_retry_interval"),
            ),
            rt.settings.seconds("insights_inline_processing_timeout"),
        )
    except TimeoutError:
        outcome = Outcome.RETRY_LATER
    metrics.WEBHOOKS.labels(label, outcome.value).inc()
    answer = {"status": outcome.value, "log_id": recorded.log_id, "event_id": webhook.event_id}
    return JSONResponse(answer, status_code=200 if outcome is Outcome.PROCESSED else 202)


async def _contract_brand(rt: Runtime, external_user_id: str | None) -> int | None:
    """The brand of a webhook posted to a contract path (brand_choice's rule); None while ambiguous."""
    try:
        return await rt.brand_resolver.resolve(external_user_id)
    except UnknownDefaultBrand as exc:
        raise ProblemError(404, "Unknown brand", str(exc), field="brand") from exc
    except DATABASE_UNAVAILABLE as exc:
        raise _unavailable("Postgres", exc) from exc

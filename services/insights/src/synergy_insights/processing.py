"""Processing a logged webhook: upsert predictions, publish to Kafka, mark the log row. And the
retry loop that finishes what could not be processed while answering Customer.io."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from synergy_insights import metrics
from synergy_insights.brand_choice import choose_brand
from synergy_insights.envelopes import insight_envelope
from synergy_insights.payloads import PayloadRejected, PredictionWebhook, Webhook, parse_webhook
from synergy_insights.publisher import InsightsPublisher
from synergy_insights.store import (
    DATABASE_ERRORS,
    BrandDirectory,
    LoggedWebhook,
    ProfileStore,
    UnknownUser,
    WebhookLog,
)

log = structlog.get_logger(service="insights")


class Outcome(enum.StrEnum):
    PROCESSED = "processed"
    WAITING_FOR_USER = "waiting_for_user"
    RETRY_LATER = "retry_later"
    WAITING_FOR_BRAND = "waiting_for_brand"
    DUPLICATE = "duplicate"
    GAVE_UP = "gave_up"


class UnknownDefaultBrand(Exception):
    def __init__(self, wanted: str) -> None:
        super().__init__(f"INSIGHTS_DEFAULT_BRAND_ID {wanted!r} is no active brand")
        self.wanted = wanted


class BrandResolver:
    """The brand of a webhook posted to a contract path: brand_choice's rule, against Postgres."""

    def __init__(self, brands: BrandDirectory, default_brand: str | None) -> None:
        self._brands = brands
        self._default = default_brand or None

    async def resolve(self, external_user_id: str | None) -> int | None:
        """The brand id, or None while ambiguous. Raises UnknownDefaultBrand for a bad default."""
        if self._default:
            default = await self._brands.brand_id(self._default)
            if default is None:
                raise UnknownDefaultBrand(self._default)
            return default
        knowing = await self._brands.brands_knowing_user(external_user_id) if external_user_id else []
        active = [] if knowing else await self._brands.active_brands()
        return choose_brand(None, knowing, active)


def type_label(webhook: Webhook) -> str:
    """The metrics label: `prediction_update`, or the reporting object type (bounded cardinality)."""
    return webhook.webhook_type if isinstance(webhook, PredictionWebhook) else webhook.object_type


class WebhookProcessor:
    def __init__(
        self,
        webhook_log: WebhookLog,
        profiles: ProfileStore,
        publisher: InsightsPublisher,
        on_user_updated: Callable[[str, str], None] = lambda brand_id, user_id: None,
    ) -> None:
        self._log = webhook_log
        self._profiles = profiles
        self._publisher = publisher
        self._on_user_updated = on_user_updated

    async def process(
        self,
        brand_id: int,
        log_id: int,
        webhook: Webhook,
        received_at: datetime,
        stop_waiting_for_user: bool = False,
        retry_in_seconds: float | None = None,
    ) -> Outcome:
        """Apply and publish a logged webhook. On failure the row stays pending, due again in
        `retry_in_seconds` (None: when the retry loop's claim scheduled it)."""
        started = time.perf_counter()
        try:
            if isinstance(webhook, PredictionWebhook):
                user_pk: int | None = await self._profiles.apply_predictions(brand_id, webhook, log_id)
                self._on_user_updated(str(brand_id), webhook.user_id)
            else:
                user_pk = await self._profiles.user_pk(brand_id, webhook.user_id) if webhook.user_id else None
            await self._publisher.publish(insight_envelope(str(brand_id), log_id, webhook, received_at))
            await self._log.mark_processed(log_id, user_pk)
        except UnknownUser as exc:
            if stop_waiting_for_user:
                await self._log.mark_failed(log_id, f"{exc}; stopped waiting for it")
                return Outcome.GAVE_UP
            await self._log.mark_pending(log_id, str(exc), retry_in_seconds)
            return Outcome.WAITING_FOR_USER
        except Exception as exc:
            log.warning("webhook_processing_failed", log_id=log_id, error=repr(exc))
            try:
                await self._log.mark_pending(log_id, repr(exc), retry_in_seconds)
            except DATABASE_ERRORS:
                pass  # the row stays pending; its next_attempt_at brings it back
            return Outcome.RETRY_LATER
        metrics.PROCESSING_SECONDS.labels(type_label(webhook)).observe(time.perf_counter() - started)
        return Outcome.PROCESSED


class RetryLoop:
    """Every interval: process the pending rows that are due, refresh the backlog gauge, and forget
    signatures too old to be replayed."""

    def __init__(
        self,
        webhook_log: WebhookLog,
        processor: WebhookProcessor,
        interval_seconds: float,
        max_backoff_seconds: float,
        unknown_user_horizon_seconds: float,
        signature_tolerance_seconds: float,
        brand_resolver: BrandResolver,
        batch_size: int = 100,
    ) -> None:
        self._brand_resolver = brand_resolver
        self._log = webhook_log
        self._processor = processor
        self._interval = interval_seconds
        self._max_backoff = max_backoff_seconds
        self._horizon = timedelta(seconds=unknown_user_horizon_seconds)
        self._tolerance = signature_tolerance_seconds
        self._batch_size = batch_size

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retry_loop_failed", error=repr(exc))
            await asyncio.sleep(self._interval)

    async def run_once(self) -> int:
        """Process one batch of due rows; how many were processed."""
        processed = 0
        for row in await self._log.claim_due(self._batch_size, self._interval, self._max_backoff):
            outcome = await self._retry(row)
            metrics.RETRIES.labels(outcome.value).inc()
            processed += outcome is Outcome.PROCESSED
        metrics.RETRY_BACKLOG.set(await self._log.backlog())
        await self._log.forget_signatures_signed_before(time.time() - 2 * self._tolerance)
        return processed

    async def _retry(self, row: LoggedWebhook) -> Outcome:
        try:
            webhook = parse_webhook(row.payload, row.signed_at)
        except PayloadRejected as exc:
            await self._log.mark_failed(row.log_id, str(exc))
            return Outcome.GAVE_UP
        brand_id = row.brand_id
        if brand_id is None:
            try:
                brand_id = await self._brand_resolver.resolve(webhook.user_id)
            except UnknownDefaultBrand as exc:
                await self._log.mark_pending(row.log_id, str(exc))
                return Outcome.WAITING_FOR_BRAND
            if brand_id is None:
                # Never given up: it waits for a brand to know the user, or for a default brand.
                await self._log.mark_pending(
                    row.log_id, f"no single brand for user {webhook.user_id!r} yet (see brand_choice)"
                )
                return Outcome.WAITING_FOR_BRAND
            if not await self._log.assign_brand(row.log_id, brand_id):
                return Outcome.DUPLICATE
        overdue = datetime.now(UTC) - row.received_at > self._horizon
        return await self._processor.process(
            brand_id, row.log_id, webhook, row.received_at, stop_waiting_for_user=overdue
        )

"""Customer.io -> EmailPreferences: the `unsubscribed` (and `subscribed`) reporting webhooks that insights
publishes on synergy.insights.v1 set `unsubscribed` here, so the triggers' suppression honours an
unsubscribe made at Customer.io (its own unsubscribe link, a list-unsubscribe it processed).

    Kafka -> decode -> subscription_change_from_insight (pure) -> order by user -> apply -> commit

Its own consumer group, so it neither waits for nor slows the trigger consumer. A change is applied only
when nothing newer was chosen here (a late webhook never undoes a resubscribe in the preference centre),
and applying the same webhook twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from synergy_schemas.topics import INSIGHTS
from synergy_streaming import (
    DELIVERED,
    DeadLetterWriter,
    ItemOutcome,
    KafkaConsumer,
    RetryPolicy,
    Skip,
    Source,
    StreamConfig,
    StreamProcessor,
    Work,
)

from synergy_marketing import preference_metrics as pm
from synergy_marketing.consumer_loop import run_restarting
from synergy_marketing.email_preferences import SubscriptionChange, subscription_change_from_insight
from synergy_marketing.preferences_store import PreferenceChangeRelay, apply_subscription_change
from synergy_marketing.settings import MarketingSettings

SUBSCRIPTION = "subscription"
log = structlog.get_logger("marketing.subscriptions")


def prepare_subscription(source: Source) -> list[Work] | Skip:
    change = subscription_change_from_insight(source.payload)
    if change is None:
        return Skip("not_a_subscription_change")
    return [Work(key=f"{change.brand_id}:{change.user_id}", target=SUBSCRIPTION, payload=change)]


class SubscriptionApplier:
    def __init__(self, pool: asyncpg.Pool, relay: PreferenceChangeRelay | None = None) -> None:
        self._pool = pool
        self._relay = relay

    async def deliver(self, target: Any, items: Sequence[Work]) -> list[ItemOutcome]:
        changed = False
        for item in items:  # in the user's order; each in its own transaction
            change: SubscriptionChange = item.payload
            applied = await apply_subscription_change(self._pool, change)
            if applied.any:
                changed = True
                pm.PREFERENCE_CHANGES.labels("customer_io").inc()
                if change.unsubscribed:
                    pm.UNSUBSCRIBES.labels("customer_io").inc()
        if changed and self._relay is not None:
            self._relay.wake()
        return [DELIVERED] * len(items)


def build_subscription_processor(
    pool: asyncpg.Pool,
    settings: MarketingSettings,
    relay: PreferenceChangeRelay | None,
    *,
    insights_topic: str | None = None,
    group_id: str | None = None,
    dead_letter_producer: Any = None,
) -> StreamProcessor:
    applier = SubscriptionApplier(pool, relay)
    return StreamProcessor(
        StreamConfig(
            service="marketing-subscriptions",
            topics=[insights_topic or INSIGHTS.name],
            max_batch_items=200,
            max_batch_wait=0.02,
            max_in_flight=2,
        ),
        KafkaConsumer(
            settings.kafka_bootstrap_servers,
            group_id=group_id or f"{settings.marketing_consumer_group}-subscriptions",
            client_id="synergy-marketing-subscriptions",
        ),
        prepare_subscription,
        applier.deliver,
        dead_letters=DeadLetterWriter(dead_letter_producer, pool),
        retry=RetryPolicy(max_attempts=20, max_window=24 * 3600, base=0.5, cap=60),
        destination_of=lambda target: str(target),
    )


async def run_subscription_consumer(
    pool: asyncpg.Pool,
    settings: MarketingSettings,
    relay: PreferenceChangeRelay | None,
    *,
    insights_topic: str | None = None,
    group_id: str | None = None,
) -> None:
    """Runs until cancelled; restarted from the committed offsets when Kafka is away."""

    def build(producer: Any) -> StreamProcessor:
        return build_subscription_processor(pool, settings, relay, insights_topic=insights_topic,
                                            group_id=group_id, dead_letter_producer=producer)

    await run_restarting("subscription consumer", settings.kafka_bootstrap_servers,
                         "synergy-marketing-subs-dlq", build)

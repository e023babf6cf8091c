"""The marketing consumer, on libs/streaming: synergy.events.v1 into the marketing state (views,
carts, watches, identities, the windows' deadlines, conversions), synergy.insights.v1's opens and
clicks into the queue.

    Kafka -> decode (decode_marketing_envelope: only the fields marketing reads)
          -> prepare (parse_event, parse_change: read and checked once) -> order by person
          -> batch -> apply_batch (one transaction: load, apply in memory, save; one statement per
             table, inside two Postgres functions) -> commit
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from msgspec import UNSET
from synergy_schemas.topics import EVENTS, INSIGHTS
from synergy_streaming import (
    DELIVERED,
    DeadLetterWriter,
    Delivered,
    Failed,
    ItemOutcome,
    KafkaConsumer,
    Reject,
    RetryPolicy,
    Skip,
    Source,
    StreamConfig,
    StreamProcessor,
    Work,
)

from synergy_marketing import metrics, store
from synergy_marketing.consumer_loop import run_restarting
from synergy_marketing.envelope import MarketingEnvelope, decode_marketing_envelope, envelope_of
from synergy_marketing.settings import MarketingSettings
from synergy_marketing.state import (
    ANONYMOUS_PREFIX,
    CATALOG_EVENTS,
    PERSON_EVENTS,
    BatchState,
    Event,
    InvalidEvent,
    WindowConfig,
    apply_event,
    new_tuple,
    parse_change,
    person_of,
)

log = structlog.get_logger()

STATE = "state"
ANALYZE_EVERY = 5000
ENGAGEMENT = "engagement"
ENGAGEMENT_METRICS = {"opened": "opened", "clicked": "clicked"}
_WATCH_EVENTS = frozenset({"watchlist_item_added", "watchlist_item_removed"})


# --- pure: what a record means ----------------------------------------------------------------


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise InvalidEvent("timestamp must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)  # reads a trailing "Z" since Python 3.11
    except ValueError as exc:
        raise InvalidEvent(f"timestamp is not ISO 8601: {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidEvent("timestamp has no time zone")
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


def parse_event(envelope: MarketingEnvelope) -> Event:
    """The envelope's marketing-relevant part; InvalidEvent when it cannot be read."""
    identifiers = envelope.identifiers
    if type(identifiers) is not dict:
        raise InvalidEvent("identifiers must be an object")
    user_id = identifiers.get("id")
    anonymous_id = identifiers.get("anonymous_id")
    # the common cases inline (a string of 1 to 150 characters, absent); _is_identifier decides the rest
    if user_id is not None and not (type(user_id) is str and 0 < len(user_id) <= 150) and not _is_identifier(
            user_id):
        raise InvalidEvent("identifiers.id must be a string of 1 to 150 characters")
    if anonymous_id is not None and not (type(anonymous_id) is str and 0 < len(anonymous_id) <= 150) and not (
            _is_identifier(anonymous_id)):
        raise InvalidEvent("identifiers.anonymous_id must be a string of 1 to 150 characters")
    data = envelope.data
    if data is UNSET:
        data = {}
    elif type(data) is not dict:
        raise InvalidEvent("data must be an object")
    name = envelope.name
    if name is not None and type(name) is not str and not isinstance(name, str):
        raise InvalidEvent("name must be a string")
    brand_id = envelope.brand_id
    if type(brand_id) is not str:
        brand_id = str(brand_id)
    if not brand_id.isdigit():
        raise InvalidEvent("brand_id must be a brand's numeric id")
    event_id = envelope.event_id
    if type(event_id) is not str:
        event_id = str(event_id)
    kind = envelope.type
    kind = kind if type(kind) is str else str(kind)
    timestamp = _timestamp(envelope.timestamp)
    if not user_id and not anonymous_id:
        person_of(user_id, anonymous_id)  # raises InvalidEvent: neither id nor anonymous_id
    return new_tuple(Event, (event_id, brand_id, kind, name, user_id, anonymous_id, timestamp, data))


def _is_identifier(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 150


def is_relevant(event: Event) -> bool:
    if event.type == "identify":
        return bool(event.user_id and event.anonymous_id)
    return event.name in PERSON_EVENTS or event.name in CATALOG_EVENTS


def work_key(event: Event) -> str:
    """Per-key order: a person's events in order; a product's catalog events in order."""
    if event.name in CATALOG_EVENTS:
        return f"{event.brand_id}:catalog:{event.data.get('product_id')}"
    if event.user_id:
        return f"{event.brand_id}:{event.user_id}"
    return f"{event.brand_id}:{ANONYMOUS_PREFIX}{event.anonymous_id}"


def prepare_event(envelope: Mapping[str, Any] | MarketingEnvelope) -> list[Work] | Skip | Reject:
    """What an event envelope means to marketing (a dict is read as `decode_marketing_envelope` reads
    the record's value)."""
    prepared = _prepare_event(envelope if isinstance(envelope, MarketingEnvelope) else envelope_of(envelope))
    return [prepared] if type(prepared) is Work else prepared


_NOT_A_MARKETING_EVENT = Skip("not_a_marketing_event")


def _prepare_event(envelope: MarketingEnvelope) -> Work | Skip | Reject:
    try:
        event = parse_event(envelope)
        if not is_relevant(event):
            return _NOT_A_MARKETING_EVENT
        change = parse_change(event)  # the data is checked here, before the batch depends on it
    except InvalidEvent as exc:
        return Reject("invalid_event", str(exc))
    return Work(work_key(event), STATE, (event, change))


def prepare_insight(envelope: Mapping[str, Any] | MarketingEnvelope) -> list[Work] | Skip | Reject:
    """Customer.io's opens and clicks of the messages we sent, by the trigger event's id."""
    if not isinstance(envelope, MarketingEnvelope):
        envelope = envelope_of(envelope)
    data = envelope.data
    if type(data) is not dict:
        return Skip("no_data")
    kind = ENGAGEMENT_METRICS.get(str(data.get("metric", "")))
    trigger_event_id = data.get("trigger_event_id")
    if kind is None or not isinstance(trigger_event_id, str) or len(trigger_event_id) != 26:
        return Skip("not_an_engagement_with_a_trigger")
    try:
        at = _timestamp(envelope.timestamp)
    except InvalidEvent as exc:
        return Reject("invalid_event", str(exc))
    brand_id = str(envelope.brand_id)
    if not brand_id.isdigit():
        return Reject("invalid_event", "brand_id must be a brand's numeric id")
    return [
        Work(
            key=f"insights:{brand_id}:{trigger_event_id}",
            target=ENGAGEMENT,
            payload=(brand_id, trigger_event_id.upper(), kind, at),
        )
    ]


# --- I/O: applying a batch ----------------------------------------------------------------------


class MarketingConsumer:
    def __init__(self, pool: asyncpg.Pool, settings: MarketingSettings, insights_topic: str | None = None):
        self.pool = pool
        self.settings = settings
        self.insights_topic = insights_topic or INSIGHTS.name
        self.windows = WindowConfig(
            cart_abandon_after=timedelta(seconds=settings.seconds("marketing_cart_abandon_after")),
            browse_abandon_after=timedelta(seconds=settings.seconds("marketing_browse_abandon_after")),
            browse_min_views=settings.marketing_browse_min_views,
        )
        self.conversion_window = timedelta(seconds=settings.seconds("marketing_conversion_window"))
        self._applied_since_analyze = 0
        self._statistics_checked = False
        self._analyzing: asyncio.Task[Any] | None = None

    def prepare(self, source: Source) -> list[Work] | Skip | Reject:
        if source.record.partition.topic == self.insights_topic:
            return prepare_insight(source.payload)
        return prepare_event(source.payload)

    def prepare_many(self, sources: Sequence[Source]) -> Sequence[Work | list[Work] | Skip | Reject]:
        """prepare over one poll chunk (one partition's records, so one topic), in order."""
        if not sources:
            return []
        if sources[0].record.partition.topic == self.insights_topic:
            return [prepare_insight(source.payload) for source in sources]
        prepare = _prepare_event  # payloads decoded by decode_marketing_envelope
        return [prepare(source.payload) for source in sources]

    async def deliver(self, target: Any, items: Sequence[Work]) -> Delivered | list[ItemOutcome]:
        if target == ENGAGEMENT:
            return await self._mark_engagements(items)
        return await self.apply_batch(items)

    async def apply_batch(self, items: Sequence[Work]) -> Delivered | list[ItemOutcome]:
        """One transaction of two statements (two more when an event is anonymous: the identities of the
        anonymous ids): the load (locks, the applied event ids, the state) and the save (every table,
        the conversions)."""
        events: list[Event] = [item.payload[0] for item in items]
        async with self.pool.acquire() as conn, conn.transaction():
            anonymous = {(e.brand_id, e.anonymous_id) for e in events if e.anonymous_id}
            identities: dict[tuple[str, str], str] = {}
            if anonymous:
                await store.keyed_access_only(conn)
                identities = await store.load_identities(conn, anonymous)
            state = BatchState(identities=dict(identities))
            persons: set[tuple[str, str]] = set()
            catalog: set[tuple[str, str]] = set()
            watch_keys: set[tuple[str, str, str]] = set()
            product_keys: set[tuple[str, str]] = set()
            resolve = state.resolve
            for event in events:
                name = event.name
                if name in CATALOG_EVENTS:
                    product = str(event.data["product_id"])
                    catalog.add((event.brand_id, product))
                    product_keys.add((event.brand_id, product))
                    continue
                person = event.user_id or resolve(event)
                persons.add((event.brand_id, person))
                if event.type == "identify" and event.anonymous_id:
                    persons.add((event.brand_id, ANONYMOUS_PREFIX + event.anonymous_id))
                    persons.add((event.brand_id, str(event.user_id)))
                if name in _WATCH_EVENTS:
                    product = str(event.data["product_id"])
                    watch_keys.add((event.brand_id, person, product))
                    product_keys.add((event.brand_id, product))
            loaded = await store.load_batch(
                conn, [(e.brand_id, e.event_id) for e in events], persons, watch_keys, catalog, product_keys
            )
            fresh = loaded.fresh
            state.persons.update(loaded.persons)
            state.window_timers = loaded.window_timers
            state.watches.update(loaded.watches)
            state.products.update(loaded.products)
            state.stored_no_views, state.stored_no_cart = loaded.without_views, loaded.without_cart
            failed: dict[int, Failed] = {}  # by the item's place; every other item is delivered
            applied_names: list[str] = []  # counted at the end (Counter over a list: one C call)
            applied_name = applied_names.append
            for index, item in enumerate(items):
                event, change = item.payload
                if fresh is not None:
                    if (event.brand_id, event.event_id) not in fresh:
                        continue  # a redelivery: applied before, changes nothing
                    fresh.discard((event.brand_id, event.event_id))  # the same event twice in one batch
                try:
                    apply_event(state, event, change)
                except InvalidEvent as exc:
                    failed[index] = Failed("invalid_event", str(exc))
                    continue
                applied_name(event.name or event.type)
            converted = await store.save_batch(conn, state, self.windows, self.conversion_window)
        applied = Counter(applied_names)
        for name, applied_count in applied.items():
            metrics.EVENTS_APPLIED.labels(name).inc(applied_count)
        self._keep_statistics_current(sum(applied.values()))
        for brand, trigger, revenue in converted:
            metrics.QUEUE_ENGAGEMENT.labels(brand, trigger, "converted").inc()
            if revenue is not None:
                metrics.RECOVERED_REVENUE.labels(brand, trigger).inc(float(revenue))
        if not failed:
            return DELIVERED
        return [failed.get(index, DELIVERED) for index in range(len(items))]

    def _keep_statistics_current(self, applied: int) -> None:
        """Every ANALYZE_EVERY applied events, the tables that grew are analyzed in the background (a
        burst into fresh tables would otherwise run on plans made for empty ones)."""
        self._applied_since_analyze += applied
        due = self._applied_since_analyze >= ANALYZE_EVERY or (applied and not self._statistics_checked)
        if not due or (self._analyzing and not self._analyzing.done()):
            return
        self._applied_since_analyze = 0
        self._statistics_checked = True

        async def analyze() -> None:
            try:
                await store.analyze_grown_tables(self.pool)
            except Exception as exc:
                log.warning("analyze of grown tables failed", error=repr(exc))

        self._analyzing = asyncio.create_task(analyze(), name="marketing-analyze")

    async def _mark_engagements(self, items: Sequence[Work]) -> list[ItemOutcome]:
        async with self.pool.acquire() as conn, conn.transaction():
            await store.keyed_access_only(conn)
            rows = await store.mark_engagements(conn, [item.payload for item in items])
        for row in rows:
            brand, trigger = str(row["brand_id"]), row["event_name"]
            if row["first_open"]:
                metrics.QUEUE_ENGAGEMENT.labels(brand, trigger, "opened").inc()
            if row["first_click"]:
                metrics.QUEUE_ENGAGEMENT.labels(brand, trigger, "clicked").inc()
        return [DELIVERED] * len(items)


def build_processor(
    pool: asyncpg.Pool,
    settings: MarketingSettings,
    *,
    events_topic: str | None = None,
    insights_topic: str | None = None,
    group_id: str | None = None,
    dead_letter_producer: Any = None,
) -> tuple[StreamProcessor, MarketingConsumer]:
    consumer = MarketingConsumer(pool, settings, insights_topic)
    processor = StreamProcessor(
        StreamConfig(
            service="marketing",
            topics=[events_topic or EVENTS.name, consumer.insights_topic],
            max_batch_items=settings.marketing_consumer_batch,
            max_batch_wait=settings.seconds("marketing_consumer_batch_wait"),
            max_in_flight=settings.marketing_consumer_in_flight,
            max_run_per_key=200,
            gc_young_threshold=settings.marketing_gc_young_objects,
        ),
        KafkaConsumer(
            settings.kafka_bootstrap_servers,
            group_id=group_id or settings.marketing_consumer_group,
            client_id="synergy-marketing",
        ),
        consumer.prepare,
        consumer.deliver,
        prepare_many=consumer.prepare_many,
        decode=decode_marketing_envelope,
        dead_letters=DeadLetterWriter(dead_letter_producer, pool),
        retry=RetryPolicy(max_attempts=20, max_window=24 * 3600, base=0.5, cap=60),
        destination_of=lambda target: str(target),
    )
    return processor, consumer


async def run_consumer(
    pool: asyncpg.Pool,
    settings: MarketingSettings,
    *,
    events_topic: str | None = None,
    insights_topic: str | None = None,
    group_id: str | None = None,
) -> None:
    """Runs until cancelled; retried from the committed offsets when Kafka is away at start."""

    def build(producer: Any) -> StreamProcessor:
        processor, _ = build_processor(pool, settings, events_topic=events_topic,
                                       insights_topic=insights_topic, group_id=group_id,
                                       dead_letter_producer=producer)
        return processor

    await warn_when_locks_may_run_out(pool, settings)
    await run_restarting("marketing consumer", settings.kafka_bootstrap_servers, "synergy-marketing-dlq",
                         build)


def locks_may_run_out(batch: int, in_flight: int, lock_table_slots: int) -> bool:
    """A batch holds one advisory lock per person until it commits. With every batch of this replica in
    flight at once taking more than half of the lock table, two replicas (or the scheduler) can exhaust
    it: Postgres then refuses a batch with "out of shared memory" until batches commit."""
    return batch * in_flight * 2 > lock_table_slots


async def warn_when_locks_may_run_out(pool: asyncpg.Pool, settings: MarketingSettings) -> bool:
    """Whether it warned: the server's lock table is too small for this replica's batches."""
    try:
        async with pool.acquire() as conn:
            slots = await store.lock_table_slots(conn)
    except (OSError, asyncpg.PostgresError):
        return False  # Postgres away at start: the consumer's own retries report it
    batch, in_flight = settings.marketing_consumer_batch, settings.marketing_consumer_in_flight
    if not locks_may_run_out(batch, in_flight, slots):
        return False
    log.warning(
        "marketing batches may exhaust Postgres's lock table: raise max_locks_per_transaction"
        " or lower MARKETING_CONSUMER_BATCH / MARKETING_CONSUMER_IN_FLIGHT",
        locks_per_replica=batch * in_flight,
        lock_table_slots=slots,
    )
    return True

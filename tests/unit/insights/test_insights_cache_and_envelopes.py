from datetime import UTC, datetime

from synergy_insights.cache import InsightsCache
from synergy_insights.envelopes import insight_envelope
from synergy_insights.payloads import parse_webhook
from synergy_schemas.envelope import Envelope

from tests.unit.insights.insights_webhook_examples import SEED_001_PREDICTIONS, reporting_webhook

AT = datetime(2024, 5, 22, 18, 35, 12, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_hits_until_invalidated_and_counts_its_ratio():
    cache = InsightsCache(ttl_seconds=60, clock=Clock())
    key = ("1", "user-1")
    assert cache.get(key) == (False, None)
    assert cache.put(key, {"v": 1}, cache.generation(key))
    assert cache.get(key) == (True, {"v": 1})
    cache.invalidate(key)
    assert cache.get(key) == (False, None)
    assert cache.stats.hit_ratio == 1 / 3


def test_cache_entries_expire():
    clock = Clock()
    cache = InsightsCache(ttl_seconds=60, clock=clock)
    cache.put("k", 1, cache.generation("k"))
    clock.now = 61
    assert cache.get("k") == (False, None)


def test_a_read_that_raced_an_invalidation_is_not_cached():
    cache = InsightsCache(ttl_seconds=60, clock=Clock())
    generation = cache.generation("k")  # reader misses and starts reading Postgres
    cache.invalidate("k")  # meanwhile an update lands
    assert not cache.put("k", "stale", generation)
    assert cache.get("k") == (False, None)


def test_disabled_cache_never_serves():
    cache = InsightsCache(ttl_seconds=60, clock=Clock())
    cache.put("k", 1, cache.generation("k"))
    cache.enabled = False
    assert cache.get("k") == (False, None)
    assert not cache.put("k", 1, cache.generation("k"))


def test_prediction_envelope_is_keyed_by_brand_and_user_and_stable_across_retries():
    webhook = parse_webhook(SEED_001_PREDICTIONS["churn"], AT)
    first = insight_envelope("7", 42, webhook, AT)
    again = insight_envelope("7", 42, webhook, AT)
    assert first == again
    assert first.key == "7:123"
    assert first.name == "predictions_updated"
    assert first.data["predictions"]["churn_probability"] == 0.78
    assert Envelope.from_json_bytes(first.to_json_bytes()) == first


def test_reporting_envelope_keeps_customer_io_event_id_and_data():
    body = reporting_webhook("customer", "unsubscribed", "user-5")
    envelope = insight_envelope("7", 43, parse_webhook(body, AT), AT)
    assert envelope.event_id == body["event_id"]
    assert envelope.name == "customer_unsubscribed"
    assert envelope.key == "7:user-5"
    assert envelope.data["metric"] == "unsubscribed"
    assert envelope.data["customer_id"] == "user-5"


def test_reporting_envelope_without_a_person_id_is_keyed_anonymously():
    body = reporting_webhook("email", "bounced", "user-5")
    body["data"] = {"identifiers": {"email": "x@example.com"}, "delivery_id": "d1"}
    envelope = insight_envelope("7", 44, parse_webhook(body, AT), AT)
    assert envelope.key == "7:anon:cio:x@example.com"

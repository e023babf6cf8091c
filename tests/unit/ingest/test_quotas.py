"""Token buckets per brand: rate, burst, per-process share, brand overrides."""

from __future__ import annotations

from synergy_ingest.quotas import Quota, QuotaBook, quota_from_settings, retry_after_header


def test_a_burst_passes_then_the_rate_holds() -> None:
    book = QuotaBook()
    quota = Quota(events_per_second=10, burst=20)
    assert book.admit("1", quota, 20, now=100.0) == 0
    assert book.admit("1", quota, 1, now=100.0) == 0.1
    assert book.admit("1", quota, 5, now=100.5) == 0  # 0.5 s refilled 5 tokens
    assert book.admit("1", quota, 1, now=100.5) == 0.1


def test_brands_have_their_own_buckets_and_no_quota_means_no_limit() -> None:
    book = QuotaBook()
    quota = Quota(events_per_second=1, burst=1)
    assert book.admit("1", quota, 1, now=0.0) == 0
    assert book.admit("1", quota, 1, now=0.0) == 1.0
    assert book.admit("2", quota, 1, now=0.0) == 0
    assert book.admit("3", None, 10_000, now=0.0) == 0


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() -> None:
    book = QuotaBook()
    quota = Quota(events_per_second=100, burst=50)
    assert book.admit("1", quota, 200, now=0.0) == 0
    assert book.admit("1", quota, 1, now=1.0) == 0.51  # 50 - 200 + 100 = -50 tokens: 51 short of one


def test_each_process_enforces_its_share() -> None:
    book = QuotaBook(processes=4)
    quota = Quota(events_per_second=40, burst=40)
    assert book.admit("1", quota, 10, now=0.0) == 0
    assert book.admit("1", quota, 1, now=0.0) == 0.1  # 10 events/s and a burst of 10 per process


def test_brand_settings_override_the_default() -> None:
    default = Quota(5, 10)
    assert quota_from_settings({}, default) == default
    assert quota_from_settings({"ingest_rate_limit_per_second": 100}, default) == Quota(100, 10)
    assert quota_from_settings(
        {"ingest_rate_limit_per_second": 100, "ingest_rate_limit_burst": 300}, default
    ) == Quota(100, 300)
    assert quota_from_settings({"ingest_rate_limit_per_second": 0}, default) is None
    assert quota_from_settings({"ingest_rate_limit_per_second": "lots"}, default) == default
    assert quota_from_settings({"ingest_rate_limit_per_second": 7}, None) == Quota(7, 7)


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after_header(0.1) == "1"
    assert retry_after_header(1.2) == "2"

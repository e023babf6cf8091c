"""The KPI definitions on a hand-built population; every expected value is worked out by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest
from synergy_analytics import kpis
from synergy_analytics.records import process_message

from tests.unit.analytics.population import SINCE, STEPS, UNTIL, envelopes


@pytest.fixture(scope="module")
def events() -> list[kpis.Event]:
    rows = [process_message(e).row for e in envelopes("7")]
    return [kpis.Event(r.user_id, r.action_type, r.occurred_at, r.event_id, r.engine_event) for r in rows]


def test_ordered_funnel_4_3_1_with_a_7_day_window_leaves_out_the_order_on_day_10(events) -> None:
    funnel = kpis.funnel(events, STEPS, SINCE, UNTIL, timedelta(days=7), "ordered")
    assert [s.users for s in funnel.steps] == [4, 3, 1]
    assert [s.conversion_from_previous for s in funnel.steps] == [None, 0.75, 1 / 3]
    assert [s.conversion_from_first for s in funnel.steps] == [1.0, 0.75, 0.25]
    # scan gaps 3600 (u1), 86400 (u2), 7200 (u3) -> 7200; order gap u1: 2 d - 1 h = 169200
    assert [s.median_seconds_from_previous for s in funnel.steps] == [None, 7200.0, 169200.0]
    assert funnel.window_seconds == 604800.0


def test_the_default_14_day_window_lets_the_day_10_order_in(events) -> None:
    funnel = kpis.funnel(events, STEPS, SINCE, UNTIL)
    assert [s.users for s in funnel.steps] == [4, 3, 2]
    assert funnel.window_seconds == 1209600.0


def test_strict_order_breaks_on_an_interleaved_client_event_but_not_on_an_engine_event(events) -> None:
    funnel = kpis.funnel(events, STEPS, SINCE, UNTIL, timedelta(days=7), "strict")
    # u3 viewed a product between session and scan; u1's points_awarded between scan and order is ignored
    assert [s.users for s in funnel.steps] == [4, 2, 1]
    assert [s.median_seconds_from_previous for s in funnel.steps] == [None, 45000.0, 169200.0]


def test_time_to_first_and_second_scan_medians_and_p75(events) -> None:
    result = kpis.time_to_first(events, "product_scanned", "user_session_started", SINCE, UNTIL)
    assert (result.cohort_users, result.users) == (4, 3)
    # first: [3600, 7200, 86400]; p75 at rank 1.5 = 7200 + 0.5 * 79200
    assert (result.median_seconds, result.p75_seconds) == (7200.0, 46800.0)
    # second: u3 18000, u1 259200, u2 1209600; p75 at rank 1.5 = 259200 + 0.5 * 950400
    assert (result.second_use_median_seconds, result.second_use_p75_seconds) == (259200.0, 734400.0)


def test_week_1_retention_is_days_7_to_13_after_each_users_own_start(events) -> None:
    result = kpis.retention(events, "user_session_started", "product_scanned", SINCE, UNTIL, week=1)
    # u1 scanned on day 8; u3 exactly 7 d after its start (in); u2 exactly 14 d after (out); u4 never
    assert (result.cohort_users, result.retained_users, result.rate) == (4, 2, 0.5)
    week0 = kpis.retention(events, "user_session_started", "product_scanned", SINCE, UNTIL, week=0)
    assert (week0.cohort_users, week0.retained_users) == (4, 3)


def test_retention_curve_counts_24_hour_windows_from_each_start(events) -> None:
    curve = kpis.retention_curve(events, "user_session_started", "product_scanned", SINCE, UNTIL, days=14)
    assert [d.retained_users for d in curve] == [2, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert {d.cohort_users for d in curve} == {4}


def test_seven_day_activation_needs_the_whole_bundle_within_7_days(events) -> None:
    result = kpis.activation(events, "user_session_started", ["product_scanned", "order_completed"], SINCE, UNTIL)
    assert (result.cohort_users, result.retained_users, result.rate) == (4, 1, 0.25)


def test_percentile_interpolates_like_percentile_cont() -> None:
    assert kpis.percentile([10.0, 20.0, 30.0, 40.0], 0.5) == 25.0
    assert kpis.percentile([10.0, 20.0, 30.0, 40.0], 0.75) == 32.5
    assert kpis.percentile([5.0], 0.75) == 5.0
    assert kpis.percentile([], 0.5) is None


def test_an_empty_range_answers_zero_users_and_no_conversion(events) -> None:
    funnel = kpis.funnel(events, STEPS, UNTIL + timedelta(days=30), UNTIL + timedelta(days=31))
    assert [(s.users, s.conversion_from_first) for s in funnel.steps] == [(0, None), (0, None), (0, None)]

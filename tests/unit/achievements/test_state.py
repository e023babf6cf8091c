"""The user state's own bookkeeping: streaks of scan days."""

from __future__ import annotations

from synergy_achievements.state import UserState, run_through


def test_the_run_of_consecutive_days_through_a_day_is_found_across_gaps_months_and_leap_days() -> None:
    days = ["2024-06-01", "2024-06-02", "2024-06-03", "2024-06-05", "2024-06-06", "2024-06-10"]
    assert [run_through(days, index) for index in range(6)] == [3, 3, 3, 2, 2, 1]
    assert run_through(["2024-05-30", "2024-05-31", "2024-06-01"], 2) == 3
    assert run_through(["2024-02-28", "2024-02-29", "2024-03-01"], 0) == 3
    assert run_through(["2023-02-28", "2023-03-01", "2023-03-03"], 1) == 2
    assert run_through(["2023-12-31", "2024-01-01"], 1) == 2
    assert run_through(["2024-06-01"], 0) == 1


def test_the_current_and_longest_streak_follow_days_arriving_in_any_order() -> None:
    state = UserState(brand_id="1", user_id="u")
    for day in ["2024-06-05", "2024-06-01", "2024-06-03", "2024-06-02", "2024-06-09", "2024-06-04"]:
        state.record_scan_day(day)
    assert state.scan_days == ["2024-06-01", "2024-06-02", "2024-06-03", "2024-06-04", "2024-06-05", "2024-06-09"]
    assert (state.longest_streak, state.current_streak()) == (5, 1)
    state.record_scan_day("2024-06-08")
    assert (state.longest_streak, state.current_streak()) == (5, 2)

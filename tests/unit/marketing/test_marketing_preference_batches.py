"""How the preference writer cuts batches from what is waiting: one change per user, none for a user whose
change is being written, arrival order kept, and no batch larger than asked."""

from __future__ import annotations

from datetime import UTC, datetime

from synergy_marketing.preferences_store import PendingChange, next_batch

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def change(user: str, value: bool) -> PendingChange:
    return PendingChange(1, user, {"newsletter": value}, "api", NOW, None)  # type: ignore[arg-type]


def described(items: list[PendingChange]) -> list[tuple[str, bool]]:
    return [(item.user_id, item.change["newsletter"]) for item in items]


def test_a_second_change_of_a_user_waits_for_the_next_batch_in_its_order() -> None:
    waiting = [
        change("a", False),
        change("b", False),
        change("a", True),
        change("c", False),
        change("a", False),
    ]
    batch, later = next_batch(waiting, set(), max_batch=10)
    assert described(batch) == [("a", False), ("b", False), ("c", False)]
    assert described(later) == [("a", True), ("a", False)]
    batch, later = next_batch(later, set(), max_batch=10)
    assert described(batch) == [("a", True)]
    assert described(later) == [("a", False)]


def test_a_user_whose_change_is_being_written_waits_whatever_came_after() -> None:
    waiting = [change("a", True), change("b", True), change("a", False)]
    batch, later = next_batch(waiting, {(1, "a")}, max_batch=10)
    assert described(batch) == [("b", True)]
    assert described(later) == [("a", True), ("a", False)]


def test_a_batch_holds_at_most_max_batch_changes_and_the_rest_keep_their_order() -> None:
    waiting = [change(f"u{n}", False) for n in range(5)]
    batch, later = next_batch(waiting, set(), max_batch=2)
    assert [item.user_id for item in batch] == ["u0", "u1"]
    assert [item.user_id for item in later] == ["u2", "u3", "u4"]


def test_the_same_users_of_another_brand_are_other_users() -> None:
    waiting = [change("a", False), PendingChange(2, "a", {"newsletter": True}, "api", NOW, None)]  # type: ignore[arg-type]
    batch, later = next_batch(waiting, set(), max_batch=10)
    assert [(item.brand_id, item.user_id) for item in batch] == [(1, "a"), (2, "a")]
    assert later == []

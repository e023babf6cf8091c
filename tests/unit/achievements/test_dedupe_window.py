"""The dedupe window: the last N applied event ids of a user, kept as 12-byte digests."""

from __future__ import annotations

from typing import Any

from synergy_achievements.processing import LoyaltyProcessor
from synergy_achievements.rules import default_rules
from synergy_achievements.state import UserState, holds_digest


def ulid_like(n: int) -> str:
    return f"01J{n:023d}"


def full_window(kept: int = 10_000) -> UserState:
    state = UserState(brand_id="1", user_id="u")
    for n in range(kept + 1):  # one more than the window: the first falls out
        state.mark_applied(ulid_like(n), kept)
    return state


def test_a_full_window_of_ten_thousand_ids_knows_the_last_ten_thousand_and_survives_the_changelog() -> None:
    state = full_window()
    stored = UserState.from_bytes(state.to_bytes())

    assert stored == state
    assert (stored.applied_count, stored.version) == (10_000, 10_001)
    assert [stored.has_applied(ulid_like(n)) for n in (0, 1, 5_000, 10_000, 10_001)] == [
        False, True, True, True, False]


def test_a_full_window_takes_about_half_of_what_the_ids_took() -> None:
    raw = full_window().to_bytes()
    # 10,000 digests of 12 bytes in base64: 160,000 characters (the ids as JSON strings took 290,000)
    assert 160_000 <= len(raw) < 161_000


def test_a_state_of_an_older_changelog_with_the_ids_themselves_still_dedupes_them() -> None:
    stored = (b'{"brand_id":"1","user_id":"u","version":2,"counts":{"product_scanned":2},'
              b'"applied":["01HZX0000000000000000000F1","01HZX0000000000000000000F2"],'
              b'"lifetime_points":20,"points_balance":20}')
    state = UserState.from_bytes(stored)

    assert (state.version, state.lifetime_points, state.applied_count) == (2, 20, 2)
    assert [state.has_applied(f"01HZX0000000000000000000F{n}") for n in (1, 2, 3)] == [True, True, False]
    assert UserState.from_bytes(state.to_bytes()) == state  # written back in the digest form


def test_a_digest_found_across_two_neighbours_is_not_held() -> None:
    digests = bytes(range(24))  # two digests: 0..11 and 12..23
    assert holds_digest(digests, bytes(range(12, 24)))
    assert not holds_digest(digests, bytes(range(6, 18)))  # the end of one and the start of the next
    assert not holds_digest(b"", bytes(range(12)))


def test_a_batch_of_fifty_finds_an_earlier_batchs_event_and_its_own_repeat_as_duplicates(scan: Any) -> None:
    processor, rules = LoyaltyProcessor(), default_rules()
    earlier = processor.apply_many(None, [scan(ulid_like(0), points_award=10)], rules).state
    events = [scan(ulid_like(n), f"2024-06-{1 + n % 28:02d}T10:00:00Z", points_award=10) for n in range(1, 49)]
    events.insert(10, scan(ulid_like(0), points_award=10))  # applied by the earlier batch
    events.insert(30, events[20])  # a redelivery inside this batch

    outcome = processor.apply_many(earlier, events, rules)

    assert len(events) == 50
    assert outcome.duplicates == ["product_scanned", "product_scanned"]
    assert (len(outcome.applied), outcome.state.version, outcome.state.applied_count) == (48, 49, 49)

"""BatchBody: a batch's events bytes and its users' stored states in, what its transactions write out. Pure
(no Kafka); the same body in child processes (`ApplyInChildProcesses`) answers the same, and a child that
dies fails the batch instead of answering nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from synergy_achievements.batch_body import (
    ApplyInChildProcesses,
    ApplyInProcess,
    BatchBody,
    BatchCounts,
    BatchResult,
    ChildProcessDied,
    InputEvent,
    Letter,
)
from synergy_achievements.rules import RuleCatalog
from synergy_achievements.snapshot import EngagementThresholds
from synergy_achievements.state import UserState

EventFactory = Any
TOPICS = {"loyalty": "t.loyalty", "snapshot": "t.snapshots", "referral_award": "t.awards"}
PARTITIONS = 4  # with Kafka's murmur2: 7:user-a and 7:user-d on 0, 7:user-b on 1, 7:user-c on 2
CATALOG = RuleCatalog()


def body() -> BatchBody:
    return BatchBody(EngagementThresholds(), 10_000, PARTITIONS, TOPICS)


def record(position: int, partition: int, event: dict[str, Any] | bytes, user: str | None = None) -> InputEvent:
    value = event if isinstance(event, bytes) else orjson.dumps(event)
    return InputEvent(position, partition, value, None if user is None else f"7:{user}".encode())


def outputs_of(result: BatchResult) -> list[tuple[int, str, bytes, bytes]]:
    return [(partition, out.topic, out.key, dict(out.headers)["event_name"]) for partition, out in result.outputs]


def test_each_users_events_are_applied_together_and_written_to_their_partition(scan: EventFactory) -> None:
    events = [
        record(0, 0, scan("01HZX0000000000000000000A1", "2024-06-01T09:00:00Z", "user-a", points_award=10), "user-a"),
        record(1, 1, scan("01HZX0000000000000000000A2", "2024-06-01T09:01:00Z", "user-b", points_award=20), "user-b"),
        record(2, 0, scan("01HZX0000000000000000000A3", "2024-06-01T09:02:00Z", "user-a", points_award=5), "user-a"),
    ]

    result = body().apply(events, {b"7:user-a": None, b"7:user-b": None}, CATALOG)

    states = {key: UserState.from_bytes(value) for _, key, value in result.states}
    assert [(partition, key) for partition, key, _ in result.states] == [(0, b"7:user-a"), (1, b"7:user-b")]
    assert (states[b"7:user-a"].version, states[b"7:user-a"].lifetime_points) == (2, 115)  # 10 + 5 + first_scan 100
    assert (states[b"7:user-b"].version, states[b"7:user-b"].lifetime_points) == (1, 120)  # 20 + first_scan 100
    assert outputs_of(result) == [
        (0, "t.loyalty", b"7:user-a", b"achievement_unlocked"), (0, "t.snapshots", b"7:user-a", b"user_snapshot"),
        (1, "t.loyalty", b"7:user-b", b"achievement_unlocked"), (1, "t.snapshots", b"7:user-b", b"user_snapshot"),
    ]
    assert result.counts == BatchCounts(applied={"product_scanned": 3}, unlocked={"first_scan": 2})
    assert (result.letters, result.missing) == ([], [])


def test_applying_a_batch_again_on_the_states_it_wrote_writes_nothing(scan: EventFactory) -> None:
    events = [record(0, 0, scan("01HZX0000000000000000000B1", user_id="user-a"), "user-a"),
              record(1, 2, scan("01HZX0000000000000000000B2", user_id="user-c"), "user-c")]
    first = body().apply(events, {b"7:user-a": None, b"7:user-c": None}, CATALOG)

    again = body().apply(events, {key: value for _, key, value in first.states}, CATALOG)

    assert len(first.states) == 2
    assert (again.states, again.outputs, again.letters) == ([], [], [])
    assert again.counts == BatchCounts(duplicates={"product_scanned": 2})


def test_malformed_anonymous_and_misplaced_events_are_sorted_out_by_position(scan: EventFactory) -> None:
    anonymous = scan("01HZX0000000000000000000C3")
    anonymous["identifiers"] = {"anonymous_id": "anon-1"}
    events = [
        record(0, 0, b"{not json"),
        record(1, 0, {**scan("01HZX0000000000000000000C2", user_id="user-a"), "brand_id": 7}, "user-a"),
        record(2, 0, anonymous),
        record(3, 3, scan("01HZX0000000000000000000C4", user_id="user-b"), "user-b"),  # 7:user-b is on 1
        record(4, 0, scan("01HZX0000000000000000000C5", user_id="user-d", points_award=1), "user-d"),
    ]

    result = body().apply(events, {b"7:user-a": None, b"7:user-b": None, b"7:user-d": None}, CATALOG)

    assert result.letters == [
        Letter(0, "invalid_envelope", "not JSON"),
        Letter(1, "invalid_envelope", "brand_id must be a non-empty string, got int '7'"),
        Letter(3, "wrong_partition", "key b'7:user-b' belongs to partition 1"),
    ]
    assert result.counts.anonymous_skipped == {"product_scanned": 1}
    assert [(partition, key) for partition, key, _ in result.states] == [(0, b"7:user-d")]
    assert UserState.from_bytes(result.states[0][2]).lifetime_points == 101


def test_an_event_the_rules_refuse_is_a_letter_and_the_users_other_events_are_applied(scan: EventFactory) -> None:
    bad = scan("01HZX0000000000000000000D2", "2024-06-01T10:00:00Z", "user-a")
    bad["data"]["product_snapshot"]["economy"]["points_award"] = "ten"
    events = [record(0, 0, scan("01HZX0000000000000000000D1", "2024-06-01T09:00:00Z", "user-a", 10), "user-a"),
              record(1, 0, bad, "user-a"),
              record(2, 0, scan("01HZX0000000000000000000D3", "2024-06-01T11:00:00Z", "user-a", 20), "user-a")]

    result = body().apply(events, {b"7:user-a": None}, CATALOG)

    assert [(letter.position, letter.reason) for letter in result.letters] == [(1, "unprocessable_event")]
    assert [(refusal.key, refusal.event_id) for refusal in result.refusals] == [
        (b"7:user-a", "01HZX0000000000000000000D2")]
    state = UserState.from_bytes(result.states[0][2])
    assert (state.version, state.lifetime_points) == (2, 130)  # 10 + 20 + first_scan 100


def test_a_user_whose_state_was_not_given_is_asked_for_and_nothing_is_applied(scan: EventFactory) -> None:
    events = [record(0, 0, scan("01HZX0000000000000000000E1", user_id="user-a"), "user-a"),
              record(1, 1, scan("01HZX0000000000000000000E2", user_id="user-b"), None)]  # a record without a key

    result = body().apply(events, {b"7:user-a": None}, CATALOG)

    assert result.missing == [b"7:user-b"]
    assert (result.states, result.outputs, result.letters) == ([], [], [])


@pytest.fixture
def children() -> Any:
    applier = ApplyInChildProcesses(2, EngagementThresholds(), 10_000, PARTITIONS, TOPICS)
    yield applier
    applier.close()


async def test_two_child_processes_answer_what_the_worker_process_answers(
        scan: EventFactory, children: ApplyInChildProcesses) -> None:
    stored = body().apply([record(0, 1, scan("01HZX0000000000000000000F0", user_id="user-b"), "user-b")],
                          {b"7:user-b": None}, CATALOG).states[0][2]
    events = [
        record(0, 0, scan("01HZX0000000000000000000F1", "2024-06-01T09:00:00Z", "user-a", points_award=10), "user-a"),
        record(1, 1, scan("01HZX0000000000000000000F2", "2024-06-02T09:00:00Z", "user-b", points_award=20), "user-b"),
        record(2, 2, scan("01HZX0000000000000000000F3", "2024-06-01T09:00:00Z", "user-c", points_award=30), "user-c"),
        record(3, 3, b"[]"),
    ]
    states = {b"7:user-a": None, b"7:user-b": stored, b"7:user-c": None}
    CATALOG.for_brand("7")  # the brand's rules built: their compiled readers must not cross to a child

    in_children = await children.apply(events, states, CATALOG)
    in_process = await ApplyInProcess(body()).apply(events, states, CATALOG)

    assert sorted(in_children.states) == sorted(in_process.states)
    assert sorted(in_children.outputs) == sorted(in_process.outputs)
    assert in_children.letters == in_process.letters == [Letter(3, "invalid_envelope", "not a JSON object")]
    assert in_children.counts == in_process.counts == BatchCounts(
        applied={"product_scanned": 3}, unlocked={"first_scan": 2})
    lifetime = {key: UserState.from_bytes(value).lifetime_points for _, key, value in in_children.states}
    assert lifetime == {b"7:user-a": 110, b"7:user-b": 520, b"7:user-c": 130}  # user-b: 400 + 100 before, then 20


async def test_a_missing_state_in_one_childs_share_asks_for_it_and_applies_nothing(
        scan: EventFactory, children: ApplyInChildProcesses) -> None:
    events = [record(0, 0, scan("01HZX0000000000000000000G1", user_id="user-a"), "user-a"),
              record(1, 1, scan("01HZX0000000000000000000G2", user_id="user-b"), None)]

    result = await children.apply(events, {b"7:user-a": None}, CATALOG)
    assert result.missing == [b"7:user-b"]
    assert result.states == []

    result = await children.apply(events, {b"7:user-a": None, b"7:user-b": None}, CATALOG)
    assert sorted(key for _, key, _ in result.states) == [b"7:user-a", b"7:user-b"]


async def test_a_child_that_dies_fails_the_batch(scan: EventFactory, children: ApplyInChildProcesses) -> None:
    events = [record(0, 0, scan("01HZX0000000000000000000H1", user_id="user-a"), "user-a")]
    await children.apply(events, {b"7:user-a": None}, CATALOG)  # the child is up
    child = children._children[0]
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child._process.join(10)

    with pytest.raises(ChildProcessDied, match="the batch body's child process has gone"):
        await children.apply(events, {b"7:user-a": None}, CATALOG)


def test_closing_ends_the_children(children: ApplyInChildProcesses) -> None:
    processes = [child._process for child in children._children]
    children.close()
    for process in processes:
        process.join(10)
    assert [process.exitcode for process in processes] == [0, 0]


PARENT = """
import sys, time
from synergy_achievements.batch_body import ApplyInChildProcesses
from synergy_achievements.snapshot import EngagementThresholds
children = ApplyInChildProcesses(2, EngagementThresholds(), 10_000, 4, {"loyalty": "l", "snapshot": "s"})
print(*(child.pid for child in children._children), flush=True)
time.sleep(60)
"""


def test_the_children_of_a_killed_worker_end_with_it() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()  # SIGKILL: the worker's end of each child's pipe closes with it
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
        time.sleep(0.1)
    assert [Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids] == [False, False]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return False

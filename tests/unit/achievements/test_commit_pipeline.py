"""CommitPipeline: a batch's transactions commit while the next batch is applied, one batch in flight, in
batch order, and the states of an uncommitted batch stay visible to the next one until committed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from synergy_achievements import worker
from synergy_achievements.worker import BatchHandOff, CommitPipeline, PartitionStep


class Exited(Exception):
    """What the stand-in for os._exit raises (SystemExit would escape the event loop)."""


class Transactions:
    """Stands in for the partitions' transactions: each commit waits until the test lets it finish."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.pipeline: CommitPipeline | None = None

    async def commit(self, steps: Mapping[int, PartitionStep]) -> None:
        [name] = {key.decode() for step in steps.values() for key, _ in step.states} or {"empty"}
        self.log.append(f"begin {name}")
        await self.release.setdefault(name, asyncio.Event()).wait()
        if name == "fails":
            raise RuntimeError("commit refused")
        assert self.pipeline is not None
        for step in steps.values():
            self.pipeline.committed(step.states)
        self.log.append(f"end {name}")


def batch(key: str, value: bytes) -> dict[int, PartitionStep]:
    return {0: PartitionStep(input_offsets={("events", 0): 1}, states=[(key.encode(), value)])}


async def test_the_next_batch_commits_only_after_the_one_in_flight() -> None:
    transactions = Transactions()
    pipeline = transactions.pipeline = CommitPipeline(transactions.commit)
    await pipeline.submit(batch("a", b"1"), [])  # returns at once: batch a is in flight
    await asyncio.sleep(0)
    assert transactions.log == ["begin a"]

    second = asyncio.ensure_future(pipeline.submit(batch("b", b"2"), []))
    await asyncio.sleep(0.01)
    assert not second.done()  # waits for batch a: one batch in flight
    assert transactions.log == ["begin a"]

    transactions.release.setdefault("a", asyncio.Event()).set()
    await second
    await asyncio.sleep(0)
    assert transactions.log == ["begin a", "end a", "begin b"]
    transactions.release.setdefault("b", asyncio.Event()).set()
    await pipeline.drain()
    assert transactions.log == ["begin a", "end a", "begin b", "end b"]


async def test_a_state_rewritten_by_the_next_batch_stays_pending_when_the_earlier_one_commits() -> None:
    transactions = Transactions()
    pipeline = transactions.pipeline = CommitPipeline(transactions.commit)
    first, second = b'{"version":1}', b'{"version":2}'
    pipeline.pending[b"u"] = first  # what apply_batch does for batch 1
    await pipeline.submit(batch("u", first), [])
    pipeline.pending[b"u"] = second  # batch 2 applied on top of batch 1, before batch 1 committed
    transactions.release.setdefault("u", asyncio.Event()).set()
    await pipeline.drain()
    assert pipeline.pending == {b"u": second}  # batch 1's commit did not drop batch 2's newer state
    pipeline.committed([(b"u", second)])
    assert pipeline.pending == {}


async def test_a_failed_commit_ends_the_process_before_the_next_batch_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[tuple[str, str]] = []

    def exit_unacked(step: str, events: list[Any], exc: BaseException) -> None:
        exits.append((step, repr(exc)))
        raise Exited(70)  # os._exit in the worker: nothing after it runs

    monkeypatch.setattr(worker, "exit_unacked", exit_unacked)
    transactions = Transactions()
    pipeline = transactions.pipeline = CommitPipeline(transactions.commit)
    await pipeline.submit(batch("fails", b"1"), [])
    transactions.release.setdefault("fails", asyncio.Event()).set()
    with pytest.raises(Exited):
        await pipeline.submit(batch("next", b"2"), [])
    assert exits == [("commit", "RuntimeError('commit refused')")]
    assert transactions.log == ["begin fails"]  # batch "next" never began a transaction


class Applier:
    """Stands in for the batch body: each batch is applied when the test lets it finish."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def apply(self, events: list[Any]) -> None:
        [name] = events
        self.log.append(f"begin {name}")
        await self.release.setdefault(name, asyncio.Event()).wait()
        if name == "fails":
            raise RuntimeError("rules raised")
        self.log.append(f"end {name}")


async def test_handed_off_batches_are_applied_in_order_with_one_waiting_at_most() -> None:
    applier = Applier()
    hand_off = BatchHandOff(applier.apply)
    await hand_off.put(["a"])  # taken by the applying task at once
    await hand_off.put(["b"])  # waits in the queue: the agent goes on to take the next batch
    await asyncio.sleep(0)
    third = asyncio.ensure_future(hand_off.put(["c"]))
    await asyncio.sleep(0.01)
    assert not third.done()  # one batch waits at most: the agent is held back
    assert applier.log == ["begin a"]

    drained = asyncio.ensure_future(hand_off.drain())
    for name in ("a", "b", "c"):
        applier.release.setdefault(name, asyncio.Event()).set()
        await asyncio.sleep(0.01)
    await third
    await drained
    assert applier.log == ["begin a", "end a", "begin b", "end b", "begin c", "end c"]


async def test_a_handed_off_batch_that_fails_ends_the_process_before_the_next_is_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[tuple[str, list[Any], str]] = []

    def exit_unacked(step: str, events: list[Any], exc: BaseException) -> None:
        exits.append((step, events, repr(exc)))
        raise Exited(70)  # os._exit in the worker: nothing after it runs

    monkeypatch.setattr(worker, "exit_unacked", exit_unacked)
    applier = Applier()
    hand_off = BatchHandOff(applier.apply)
    await hand_off.put(["fails"])
    await hand_off.put(["next"])
    applier.release.setdefault("fails", asyncio.Event()).set()
    await asyncio.sleep(0.01)
    assert exits == [("apply-events", ["fails"], "RuntimeError('rules raised')")]
    assert applier.log == ["begin fails"]  # batch "next" was never applied
    with pytest.raises(Exited):
        await hand_off._task  # type: ignore[misc]  # the applying task ended there

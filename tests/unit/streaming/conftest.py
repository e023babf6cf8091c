"""Factories for runtime tests on the in-memory broker and the fake clock (no Kafka)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from synergy_streaming import (
    DELIVERED,
    DeadLetter,
    DlqBrake,
    FakeClock,
    StreamConfig,
    StreamProcessor,
    Work,
    decode_envelope,
)
from synergy_streaming.local_broker import LocalBroker

TOPIC = "events"


def envelope(event_id: str, user: str, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "brand_id": "1", "identifiers": {"id": user}, **extra})


def by_user(source: Any) -> list[Work]:
    payload = source.payload
    return [Work(key=payload["identifiers"]["id"], target="t", payload=payload["event_id"])]


@dataclass
class RecordingWriter:
    """Stands in for the Postgres+Kafka writer; `fail` makes the next writes raise."""

    letters: list[DeadLetter] = field(default_factory=list)
    fail: int = 0

    async def write_until_durable(self, letters: Sequence[DeadLetter]) -> None:
        while self.fail:
            self.fail -= 1
            await asyncio.sleep(0)
        self.letters.extend(letters)


@dataclass
class Recorder:
    """A deliver function that records each call and answers from a script (default: delivered)."""

    calls: list[list[str]] = field(default_factory=list)
    answer: Callable[[list[str]], Any] = lambda ids: DELIVERED
    gate: asyncio.Event | None = None

    async def __call__(self, target: Any, items: Sequence[Work]) -> Any:
        ids = [item.payload for item in items]
        self.calls.append(ids)
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(ids)

    @property
    def delivered(self) -> list[str]:
        return [i for call in self.calls for i in call]


@pytest.fixture
def broker() -> LocalBroker:
    b = LocalBroker()
    b.create_topic(TOPIC, 2)
    return b


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def processor_factory(broker: LocalBroker, clock: FakeClock) -> Any:
    running: list[tuple[StreamProcessor, asyncio.Task[None]]] = []

    @contextlib.asynccontextmanager
    async def make(deliver: Any, prepare: Any = by_user, writer: RecordingWriter | None = None,
                   group: str = "g", **config: Any) -> AsyncIterator[StreamProcessor]:
        brake = config.pop("brake", DlqBrake())
        prepare_many = config.pop("prepare_many", None)
        prepare_runs = config.pop("prepare_runs", None)
        decode = config.pop("decode", decode_envelope)
        processor = StreamProcessor(
            StreamConfig(service="test", topics=[TOPIC], brake=brake, **config),
            broker.consumer(group), prepare, deliver, dead_letters=writer,  # type: ignore[arg-type]
            clock=clock, prepare_many=prepare_many, prepare_runs=prepare_runs, decode=decode,
        )
        task = asyncio.create_task(processor.run())
        running.append((processor, task))
        try:
            yield processor
        finally:
            processor.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)

    return make


async def until(condition: Callable[[], bool], clock: FakeClock, step: float = 0.05,
                limit: float = 120.0) -> None:
    """Advance fake time in small steps (letting real tasks run) until `condition` holds."""
    moved = 0.0
    while not condition():
        if moved > limit:
            raise AssertionError("condition never held")
        await clock.advance(step)
        await asyncio.sleep(0.001)
        moved += step

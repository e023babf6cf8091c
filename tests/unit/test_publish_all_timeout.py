"""publish_all's timeout bounds the whole call: a send that waits for a partition leader (as after a broker
loss, found by the three-broker fault test) ends in PublishError, not in a request that hangs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from synergy_common.kafka import OutgoingMessage, PublishError, publish_all


class LeaderlessProducer:
    """A producer whose send() waits for metadata that never comes, like aiokafka's without a leader."""

    def __init__(self) -> None:
        self.sends = 0

    async def send(self, topic: str, **_: Any) -> asyncio.Future[None]:
        self.sends += 1
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class AcknowledgingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, *, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


MESSAGES = [
    OutgoingMessage("t", "brand:user", b'{"n": 1}', ()),
    OutgoingMessage("t", "brand:user", b'{"n": 2}', ()),
]


async def test_a_send_waiting_for_a_leader_times_out_within_the_timeout() -> None:
    producer = LeaderlessProducer()
    started = time.monotonic()
    with pytest.raises(PublishError, match="did not acknowledge"):
        await publish_all(producer, MESSAGES, timeout=0.3)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
    assert producer.sends == 1


async def test_acknowledged_sends_return() -> None:
    producer = AcknowledgingProducer()
    await publish_all(producer, MESSAGES, timeout=0.3)  # type: ignore[arg-type]
    assert producer.sent == [("t", b'{"n": 1}'), ("t", b'{"n": 2}')]

"""faust_pipeline: the consumer's hand-over of a message (stepped at once; raced against a suspension of
the flow only when it waits) and the lean monitor keep what faust relies on."""

from __future__ import annotations

import asyncio

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from mode import Service
from synergy_achievements.faust_pipeline import (
    LeanMonitor,
    faust_consumer_delivers_without_a_race_per_message,
)

faust_consumer_delivers_without_a_race_per_message()


class ConsumerService(Service):
    """A mode service standing in for faust's consumer: `wait_first` reads only its stopped/crashed events."""


async def deliver(service: Service, callback: object, flow: asyncio.Event) -> object:
    return await Consumer.wait_first(service, callback, flow.wait())  # type: ignore[arg-type]


async def test_a_callback_that_does_not_wait_is_delivered_without_a_task() -> None:
    service, flow = ConsumerService(), asyncio.Event()
    tasks_before = len(asyncio.all_tasks())
    steps: list[str] = []

    async def callback() -> str:
        steps.append("delivered")
        return "ok"

    coroutine = callback()
    result = await deliver(service, coroutine, flow)

    assert steps == ["delivered"]
    assert result.done == [coroutine] and result.results == ["ok"]
    assert result.stopped is False
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_callback_that_waits_finishes_when_what_it_waits_for_comes() -> None:
    service, flow, go = ConsumerService(), asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def callback() -> str:
        steps.append("waiting")
        await go.wait()
        steps.append("delivered")
        return "late"

    delivery = asyncio.ensure_future(deliver(service, callback(), flow))
    await asyncio.sleep(0.01)
    assert steps == ["waiting"] and not delivery.done()
    go.set()
    result = await asyncio.wait_for(delivery, 1)

    assert steps == ["waiting", "delivered"]
    assert result.results == ["late"] and result.stopped is False


async def test_a_waiting_callback_is_cancelled_when_the_flow_is_suspended() -> None:
    service, flow, never = ConsumerService(), asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def callback() -> None:
        steps.append("waiting")
        try:
            await never.wait()
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise
        steps.append("delivered")

    delivery = asyncio.ensure_future(deliver(service, callback(), flow))
    await asyncio.sleep(0.01)
    flow.set()  # faust's stop_flow: a rebalance began
    result = await asyncio.wait_for(delivery, 1)
    await asyncio.sleep(0)

    assert steps == ["waiting", "cancelled"]
    assert result.results == [True] and result.stopped is False  # the flow event won, as in faust


async def test_a_callback_that_raises_raises_from_the_hand_over() -> None:
    service, flow = ConsumerService(), asyncio.Event()

    async def callback() -> None:
        raise ValueError("undecodable")

    with pytest.raises(ValueError, match="undecodable"):
        await deliver(service, callback(), flow)


async def test_a_delivery_after_the_consumer_stopped_reports_stopped() -> None:
    service, flow = ConsumerService(), asyncio.Event()
    service._stopped.set()

    async def callback() -> str:
        return "ok"

    result = await deliver(service, callback(), flow)

    assert result.stopped is True and result.results == []


async def test_other_waits_go_to_modes_wait_first_unchanged() -> None:
    service = ConsumerService()

    async def quick() -> int:
        return 7

    result = await Consumer.wait_first(service, quick(), timeout=1.0)  # type: ignore[arg-type]

    assert result.results == [7] and result.stopped is False


def test_the_lean_monitor_keeps_the_stream_inbound_time_faust_checks() -> None:
    monitor = LeanMonitor()
    tp = TP("synergy.events.v1", 3)

    state = monitor.on_stream_event_in(tp, 41, stream=None, event=None)
    monitor.on_message_in(tp, 41, message=None)
    monitor.on_stream_event_out(tp, 41, stream=None, event=None, state=state)
    monitor.on_message_out(tp, 41, message=None)

    assert state is None
    assert list(monitor.stream_inbound_time) == [tp]
    assert monitor.events_total == 0 and monitor.messages_received_total == 0

"""Two costs of faust's per-message pipeline that the worker (and the bench's faust floor) take out.

Both are per message and both are paid by any faust agent; the README's fifth round of issue 15 point 8
holds the profile that ranked them and the figures before and after.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from time import monotonic
from typing import Any

from faust.sensors.monitor import Monitor
from faust.transport.consumer import Consumer
from faust.types import TP
from mode.services import WaitResults


class LeanMonitor(Monitor):
    """faust's default sensor without its per-message statistics.

    faust always installs `App.monitor` as a sensor, and its stream and consumer call it for every
    message and event (`on_message_in`, `on_stream_event_in`/`_out`, `on_message_out`): counters by topic,
    stream and task, timings, a deque of event runtimes. Nothing reads them here (faust's web views are
    off; the worker exports its own Prometheus metrics). What faust itself reads is kept: the time a
    stream last took an event from a partition (`stream_inbound_time`, which faust's consumer checks to
    log a stream that stopped processing)."""

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> dict | None:
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: Any, event: Any,
                            state: dict | None = None) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        return None


@types.coroutine
def _rest_of(coroutine: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """The rest of a coroutine that was stepped once and yielded `yielded` (what it waits on), as an
    awaitable: the task running this waits on `yielded`, then resumes the coroutine (or throws into it
    what the task was thrown, e.g. its cancellation)."""
    try:
        yield yielded
    except BaseException as exc:
        try:
            yielded = coroutine.throw(exc)
        except StopIteration as stop:
            return stop.value
        return (yield from _rest_of(coroutine, yielded))
    return (yield from coroutine)


async def _resumed(coroutine: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _rest_of(coroutine, yielded)


def faust_consumer_delivers_without_a_race_per_message() -> None:
    """faust's consumer hands each message to the conductor racing it against a suspension of the flow
    (faust/transport/consumer.py `_drain_messages`: `await self.wait_first(callback(message),
    self.suspend_flow.wait())`). mode's `wait_first` makes four tasks for that (the callback, the flow
    event, the consumer's stopped and crashed events), waits on them and cancels three: 29% of the bare
    faust agent's CPU on the bench. The race only matters when the callback blocks (flow control
    suspended during a rebalance, a full stream buffer, the producer's buffer over its limit); almost
    always it runs through without waiting.

    So the callback is stepped at once: if it finishes in that step, it is done as it would have been
    in its task (its result and exceptions are the same) and no task is made; if it waits, the rest of
    it runs in faust's race exactly as before, so a suspension of the flow still interrupts it. faust's
    `_drain_messages` is the only caller with this shape (two coroutines, no timeout); every other call
    goes to mode's `wait_first` unchanged."""
    original = Consumer.wait_first
    if getattr(original, "delivers_without_a_race", False):
        return

    async def wait_first(self: Consumer, *coros: Any, timeout: Any = None) -> WaitResults:
        if timeout is not None or len(coros) != 2:
            return await original(self, *coros, timeout=timeout)
        callback, flow_suspended = coros
        if type(callback) is not types.CoroutineType or type(flow_suspended) is not types.CoroutineType:
            return await original(self, *coros)
        try:
            yielded = callback.send(None)
        except StopIteration as done:
            flow_suspended.close()
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([callback], [done.value], False)
        except BaseException:
            flow_suspended.close()
            raise
        return await original(self, _resumed(callback, yielded), flow_suspended)

    wait_first.delivers_without_a_race = True  # type: ignore[attr-defined]
    Consumer.wait_first = wait_first  # type: ignore[method-assign,assignment]

"""How the worker sets faust up, in one place, so the bench's faust floor (tests/bench/faust_floor.py) is
configured exactly alike: `faust_app_options` applies the patches below and returns the App options both
pass to faust.

Two of the patches take out costs of faust's per-message pipeline, paid by any faust agent (the README's
fifth round of issue 15 point 8 holds the profile that ranked them and the figures before and after); the
third reads read_committed with a short fetch wait; the fourth makes faust's seek to committed offsets
rewind every partition, also one with no commit yet.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator, Mapping
from time import monotonic
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.sensors.monitor import Monitor
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from mode.services import WaitResults

from synergy_achievements.settings import AchievementsSettings


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


def faust_consumer_reads_committed_and_fetches_briskly(fetch_max_wait_ms: int) -> None:
    """Two settings of faust's aiokafka consumer that faust does not expose.

    Read committed: faust builds its consumer read_committed only with processing_guarantee="exactly_once"
    (faust/transport/drivers/aiokafka.py `_create_worker_consumer` reads `consumer.in_transaction`), which
    this worker does not use (see the README). Its consumer must read read_committed all the same: the
    changelog it restores the table from, the referral awards it applies and the outputs the read model
    is written from are all written in transactions, and an aborted record must not count. The flag is
    raised only while the aiokafka consumer is built, so faust's commits and highwaters stay as they are.

    Fetch wait: faust passes `fetch_max_wait_ms=1500`. aiokafka's fetcher leaves a partition out of the
    next fetch while records it fetched for it are still unread, and sends at most one fetch per broker
    at a time: when every events partition has unread records, the fetch holds only partitions with
    nothing new (the referral awards), the broker keeps it up to the wait, and once the unread records
    are drained the stream starves until it returns. That was the ~700 ms stall before about every
    tenth batch (README, issue 15 point 8); a short wait bounds it."""
    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "patched_by_worker", False):
        original = original.original  # type: ignore[attr-defined]

    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        in_transaction = self.consumer.in_transaction
        self.consumer.in_transaction = True
        try:
            consumer = original(self, transport)
        finally:
            self.consumer.in_transaction = in_transaction
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts its fetcher
        return consumer

    create.patched_by_worker = True  # type: ignore[attr-defined]
    create.original = original  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


async def seek_to_committed_or_earliest(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int | None]:
    """Seeks every assigned partition to its committed offset, and one with no commit (or a commit of
    0) to its beginning; returns the committed offsets, as aiokafka's `seek_to_committed` does.

    aiokafka's `seek_to_committed` seeks only partitions whose commit is above 0 and leaves the others
    where the fetcher is. faust relies on that seek to take back records it fetched and then dropped
    (a getmany that finds the flow stopped, a delivery cut by a flow suspension, the queues cleared on
    a rebalance): a partition with no commit yet kept its advanced position, and the dropped records were
    never read again while the worker ran (the restart stall in the README, issue 15)."""
    committed: dict[TopicPartition, int | None] = await consumer.seek_to_committed()
    left_where_they_are = [tp for tp, offset in committed.items() if offset is None or offset <= 0]
    if left_where_they_are:
        await consumer.seek_to_beginning(*left_where_they_are)  # the App's consumer_auto_offset_reset
    return committed


def faust_consumer_seeks_every_partition_to_committed() -> None:
    """faust's aiokafka consumer thread seeks with `seek_to_committed_or_earliest`."""
    if getattr(AIOKafkaConsumerThread.seek_to_committed, "rewinds_uncommitted", False):
        return

    async def seek_to_committed(self: AIOKafkaConsumerThread) -> Mapping[TopicPartition, int | None]:
        return await self.call_thread(seek_to_committed_or_earliest, self._ensure_consumer())

    seek_to_committed.rewinds_uncommitted = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]


def faust_app_options(settings: AchievementsSettings) -> dict[str, Any]:
    """Applies the worker's patches of faust's consumer (read committed with the configured fetch wait;
    a message handed over without a race of four tasks; every partition rewound by the seek to committed
    offsets) and returns the faust App options the worker and
    the bench's faust floor share: poll size, stream buffer, producer batching, offset commit interval,
    the lean monitor, no web server."""
    faust_consumer_reads_committed_and_fetches_briskly(
        int(settings.seconds(settings.achievements_fetch_max_wait) * 1000))
    faust_consumer_delivers_without_a_race_per_message()
    faust_consumer_seeks_every_partition_to_committed()
    return {
        "web_enabled": False,
        "consumer_auto_offset_reset": "earliest",  # seek_to_committed_or_earliest seeks to the beginning
        "broker_commit_interval": 1.0,
        # Unbounded polls hand faust's stream huge record maps it drains ~6x slower (measured: 2.4k vs
        # 14k msgs/s through take_events on the bench topic).
        "broker_max_poll_records": settings.achievements_max_poll_records,
        "producer_linger": 0.005,
        "producer_max_batch_size": 512 * 1024,
        "stream_buffer_maxsize": settings.achievements_stream_buffer_maxsize,
        "monitor": LeanMonitor(),
    }

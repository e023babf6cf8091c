"""The one garbage-collector tuning: the thresholds it sets, what it freezes, and who uses it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from synergy_analytics.service import Analytics
from synergy_analytics.settings import AnalyticsSettings
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_streaming import DELIVERED, StreamConfig, StreamProcessor
from synergy_streaming.local_broker import LocalBroker


@pytest.fixture(autouse=True)
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_default_thresholds_make_young_collections_rare() -> None:
    gc.set_threshold(700, 10, 10)
    tune_garbage_collector(freeze=False)
    assert gc.get_threshold() == (50_000, 20, 20)


def test_young_threshold_is_a_parameter() -> None:
    gc.set_threshold(700, 10, 10)
    tune_garbage_collector(12_345, freeze=False)
    assert gc.get_threshold() == (12_345, 20, 20)


def test_freeze_moves_the_live_heap_out_of_the_collectors_sight() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_garbage_collector(30_000)
    assert gc.get_freeze_count() > 1000  # at least the modules and objects this test process holds
    assert gc.get_threshold() == (30_000, 20, 20)


def test_without_freeze_nothing_is_frozen() -> None:
    gc.unfreeze()
    tune_garbage_collector(30_000, freeze=False)
    assert gc.get_freeze_count() == 0


def test_runtime_run_sets_its_configured_young_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    broker = LocalBroker()
    broker.create_topic("t", 1)

    async def deliver(target: object, items: object) -> object:
        return DELIVERED

    async def run_briefly() -> None:
        processor = StreamProcessor(StreamConfig(service="gc-test", topics=["t"], gc_young_threshold=33_000),
                                    broker.consumer("g"), lambda source: [], deliver)
        task = asyncio.create_task(processor.run())
        await asyncio.sleep(0.05)
        processor.stop()
        await task

    asyncio.run(run_briefly())
    assert gc.get_threshold() == (33_000, 20, 20)


def test_analytics_passes_its_documented_setting_to_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTICS_GC_YOUNG_OBJECTS", "25000")
    analytics = Analytics(AnalyticsSettings(), pool=None, log_pool=None)  # type: ignore[arg-type]
    assert analytics.stream_config().gc_young_threshold == 25_000

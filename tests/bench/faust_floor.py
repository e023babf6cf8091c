"""The faust ceiling of the achievements bench: a bare faust agent that only drains `take_events`.

    python -m tests.bench.faust_floor   (env: KAFKA_BOOTSTRAP_SERVERS, FLOOR_APP_ID, FLOOR_SOURCE, FLOOR_SINK)

Configured as the worker configures faust, from the same settings (ACHIEVEMENTS_BATCH_SIZE,
_BATCH_WAIT_SECONDS, _MAX_POLL_RECORDS, _FETCH_MAX_WAIT and their defaults): poll size, batch size and
wait, its consumer read_committed with the worker's fetch wait, memory store, GC tuning, lz4 level, and
the worker's two cuts of faust's per-message pipeline (the lean monitor, and the hand-over of a message
without a race of four tasks): the patches and App options come from the worker's own
`synergy_achievements.faust_pipeline.faust_app_options`. It does
nothing with the events; per batch it writes one record holding the batch's size, so the bench measures it
the way it measures the worker: on the broker timestamps of what it wrote.
"""

from __future__ import annotations

import os
from typing import Any

import faust
from synergy_achievements.faust_pipeline import faust_app_options
from synergy_achievements.publisher import PRODUCER_SETTINGS, compress_lz4_fast
from synergy_achievements.settings import settings_from_env
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_common.kafka import durable_producer

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
SOURCE, SINK = os.environ["FLOOR_SOURCE"], os.environ["FLOOR_SINK"]
SETTINGS = settings_from_env()  # the worker's own settings, defaults included

app = faust.App(
    os.environ["FLOOR_APP_ID"], broker=f"kafka://{BOOTSTRAP}", store="memory://",
    datadir=os.environ.get("FLOOR_DATA_DIR", ".local/bench-faust-floor"),
    **faust_app_options(SETTINGS),  # the worker's own faust setup: patches and App options
)
source = app.topic(SOURCE, key_serializer="raw", value_serializer="raw")  # type: ignore[arg-type]


@app.agent(source)
async def drain(stream: Any) -> None:
    producer = durable_producer(BOOTSTRAP, client_id="bench-faust-floor", **PRODUCER_SETTINGS)
    await producer.start()
    async for events in stream.take_events(SETTINGS.achievements_batch_size,
                                           within=SETTINGS.achievements_batch_wait_seconds):
        await producer.send_and_wait(SINK, str(len(events)).encode())


if __name__ == "__main__":
    tune_garbage_collector()
    compress_lz4_fast()  # as the worker compresses
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()

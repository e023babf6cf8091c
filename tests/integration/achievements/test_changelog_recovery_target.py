"""The offset faust's recovery waits for on a changelog written in transactions (worker.last_committed_offsets).

Read committed, a changelog partition ends with a transaction marker no consumer receives; the target must be
the last committed record, found past aborted transactions, or -1 when nothing was ever committed.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer
from faust.types import TP
from synergy_achievements.worker import last_committed_offsets


async def transaction(producer: AIOKafkaProducer, topic: str, partition: int, count: int, commit: bool) -> None:
    await producer.begin_transaction()
    for n in range(count):
        await (await producer.send(topic, f"v{n}".encode(), key=b"k", partition=partition))
    if commit:
        await producer.commit_transaction()
    else:
        await producer.abort_transaction()


async def test_the_target_is_the_last_committed_record_behind_markers_and_aborted_transactions(
    topic_factory: Any, kafka_bootstrap: str,
) -> None:
    topic = await topic_factory(4, prefix="ach.changelog")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-writer")
    await producer.start()
    try:
        # partition 0: 3 committed (offsets 0-2, marker 3), then 5 committed (4-8, marker 9)
        await transaction(producer, topic, 0, 3, commit=True)
        await transaction(producer, topic, 0, 5, commit=True)
        # partition 1: 2 committed (0-1, marker 2), then 100 aborted (3-102, marker 103): the tail window
        # of 64 holds no committed record, the next one does
        await transaction(producer, topic, 1, 2, commit=True)
        await transaction(producer, topic, 1, 100, commit=False)
        # partition 2: only an aborted transaction (0-3, marker 4)
        await transaction(producer, topic, 2, 4, commit=False)
    finally:
        await producer.stop()
    # faust's highwaters: end offset - 1 (partition 3 is empty: -1)
    highwaters = {TP(topic, 0): 9, TP(topic, 1): 103, TP(topic, 2): 4, TP(topic, 3): -1}

    found = await last_committed_offsets(kafka_bootstrap, highwaters)

    assert found == {TP(topic, 0): 8, TP(topic, 1): 1, TP(topic, 2): -1, TP(topic, 3): -1}

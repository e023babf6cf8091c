"""faust's seek back to committed offsets rewinds every partition (faust_pipeline.seek_to_committed_or_earliest).

faust takes back the records it fetched and dropped (flow stopped, queues cleared on a rebalance) by seeking to
the committed offsets. A partition never committed, or committed at 0, must go back to its beginning, or the
dropped records are not read again while the worker runs: the restart stall of issue 15.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from synergy_achievements.faust_pipeline import seek_to_committed_or_earliest


async def test_a_read_partition_goes_back_to_its_commit_or_to_its_beginning_when_it_has_none(
    topic_factory: Any, kafka_bootstrap: str, kafka_producer: AIOKafkaProducer,
) -> None:
    topic = await topic_factory(3, prefix="ach.events")
    for partition in range(3):
        for n in range(5):
            await (await kafka_producer.send(topic, f"p{partition}-{n}".encode(), partition=partition))
    never, at_zero, at_three = (TopicPartition(topic, p) for p in range(3))
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"seek-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([never, at_zero, at_three])
        await consumer.commit({at_zero: OffsetAndMetadata(0, ""), at_three: OffsetAndMetadata(3, "")})
        await consumer.seek_to_beginning(never, at_zero, at_three)
        read: list[bytes] = []
        while len(read) < 15:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                read.extend(record.value for record in records)
        assert [await consumer.position(tp) for tp in (never, at_zero, at_three)] == [5, 5, 5]

        committed = await seek_to_committed_or_earliest(consumer)

        assert committed == {never: None, at_zero: 0, at_three: 3}
        assert [await consumer.position(tp) for tp in (never, at_zero, at_three)] == [0, 0, 3]
        again: list[bytes] = []
        while len(again) < 12:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                again.extend(record.value for record in records)
        assert sorted(again) == sorted(
            [f"p0-{n}".encode() for n in range(5)] + [f"p1-{n}".encode() for n in range(5)]
            + [b"p2-3", b"p2-4"]
        )
    finally:
        await consumer.stop()

"""`python -m tests.integration.achievements.faulty_worker`: the achievements worker, with faults injected.

ACH_FAULTS names them (comma-separated), each firing once across restarts (a marker file in ACH_FAULT_DIR
records that it fired, with the pid of the process it fired in):
- `publish`: the first send of a batch's records with two or more loyalty outputs sends half of them inside
  the partition's transaction, then raises;
- `persist`: the first Postgres write of two or more records writes half of them, then raises;
- `slow_publish`: the first send of a batch's records with a loyalty output waits 3 s inside the
  partition's transaction (three of faust's 1 s commit intervals, long after faust acked the batch), then
  raises;
- `stop_in_transaction`: the first send of a batch's records with a loyalty output sends them all inside
  the partition's transaction, then stops the process with SIGSTOP before the commit (a zombie to be
  resumed with SIGCONT by the test).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from synergy_achievements import publisher
from synergy_achievements.__main__ import main
from synergy_achievements.persistence import LoyaltyWriter
from synergy_achievements.publisher import Record
from synergy_schemas.topics import LOYALTY

FAULTS = {name for name in os.environ.get("ACH_FAULTS", "").split(",") if name}
FAULT_DIR = Path(os.environ.get("ACH_FAULT_DIR", "."))


def fire_once(fault: str) -> bool:
    marker = FAULT_DIR / f"{fault}.fired"
    if fault not in FAULTS or marker.exists():
        return False
    marker.write_text(str(os.getpid()))
    return True


original_send_records = publisher.send_records
original_write = LoyaltyWriter.write


async def send_records_with_faults(
    producer: AIOKafkaProducer, records: Sequence[Record], partitions_of: Callable[[str], Awaitable[int]],
) -> list[int]:
    loyalty = [record for record in records if record.topic == LOYALTY.name]
    if len(loyalty) >= 2 and fire_once("publish"):
        await original_send_records(producer, records[: len(records) // 2], partitions_of)
        raise RuntimeError("injected fault: publish failed half-way through a batch")
    if loyalty and fire_once("slow_publish"):
        await asyncio.sleep(3.0)
        raise RuntimeError("injected fault: publish failed after 3 s, with the batch acked by faust")
    offsets = await original_send_records(producer, records, partitions_of)
    if loyalty and fire_once("stop_in_transaction"):
        (FAULT_DIR / "stopped.offsets").write_text(",".join(map(str, offsets)))
        os.kill(os.getpid(), signal.SIGSTOP)  # resumed here by SIGCONT, then commits (or is fenced)
    return offsets


async def write_failing_once(self: LoyaltyWriter, envelopes: list[dict[str, Any]]) -> None:
    if len(envelopes) >= 2 and fire_once("persist"):
        await original_write(self, envelopes[: len(envelopes) // 2])
        raise RuntimeError("injected fault: Postgres write failed half-way through a batch")
    await original_write(self, envelopes)


publisher.send_records = send_records_with_faults
LoyaltyWriter.write = write_failing_once  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

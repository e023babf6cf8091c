"""`python -m tests.integration.achievements.faulty_worker`: the achievements worker, with faults injected.

ACH_FAULTS names them (comma-separated), each failing once across restarts (a marker file in
ACH_FAULT_DIR records that it fired):
- `publish`: the first publish of loyalty outputs sends half of its records, then raises;
- `persist`: the first Postgres write of two or more records writes half of them, then raises.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synergy_achievements.__main__ import main
from synergy_achievements.persistence import LoyaltyWriter
from synergy_achievements.publisher import BatchPublisher, Record
from synergy_schemas.topics import LOYALTY

FAULTS = {name for name in os.environ.get("ACH_FAULTS", "").split(",") if name}
FAULT_DIR = Path(os.environ.get("ACH_FAULT_DIR", "."))


def fire_once(fault: str) -> bool:
    marker = FAULT_DIR / f"{fault}.fired"
    if fault not in FAULTS or marker.exists():
        return False
    marker.write_text(str(os.getpid()))
    return True


original_publish = BatchPublisher.publish
original_write = LoyaltyWriter.write


async def publish_failing_once(self: BatchPublisher, records: Sequence[Record]) -> list[int]:
    loyalty = [record for record in records if record.topic == LOYALTY.name]
    if len(loyalty) >= 2 and fire_once("publish"):
        await original_publish(self, records[: len(records) // 2])
        raise RuntimeError("injected fault: publish failed half-way through a batch")
    return await original_publish(self, records)


async def write_failing_once(self: LoyaltyWriter, envelopes: list[dict[str, Any]]) -> None:
    if len(envelopes) >= 2 and fire_once("persist"):
        await original_write(self, envelopes[: len(envelopes) // 2])
        raise RuntimeError("injected fault: Postgres write failed half-way through a batch")
    await original_write(self, envelopes)


BatchPublisher.publish = publish_failing_once  # type: ignore[method-assign]
LoyaltyWriter.write = write_failing_once  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

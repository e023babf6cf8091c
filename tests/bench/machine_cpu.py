"""CPU accounting shared by the benchmarks: a process tree's CPU seconds, the local Kafka broker's pid, and
the cores a target rate needs at the CPU per event a run measured.

The budget line exists because a ratio target can ask for more CPU than the machine has: a loop under
test and the broker it writes to share the same cores, so a rate times the CPU each event costs them
(both measured in the same run) is the number of cores that rate needs, whatever the code does in between.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process, all its threads (None once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        own = process_cpu_seconds(current)
        if own is None:  # a child that has just ended
            continue
        total += own
        with suppress(FileNotFoundError, ProcessLookupError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def kafka_broker_pid(bootstrap: str) -> int | None:
    """The pid of the local Kafka broker listening on the bootstrap port (None when not on this machine)."""
    port = bootstrap.split(",")[0].rsplit(":", 1)[-1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" not in arguments:
            continue
        config = Path(arguments[arguments.index(b"kafka.Kafka") + 1].decode())
        with suppress(OSError):
            if f"PLAINTEXT://127.0.0.1:{port}" in config.read_text():
                return int(entry.name)
    return None


def cores_needed(events_per_second: float, *microseconds_per_event: float) -> float:
    """The cores a rate keeps busy when each event costs these CPU microseconds (in all processes named)."""
    return events_per_second * sum(microseconds_per_event) / 1e6


def budget_line(target: str, events_per_second: float, costs: dict[str, float],
                measured: float | None = None) -> str:
    """One line: the target's rate, the CPU an event cost each process in this run, the cores that makes,
    and the cores this machine has; with `measured` (the rate the run reached), the cores that rate kept
    busy at the same costs, which the target's must exceed by the ratio of the two rates."""
    parts = " + ".join(f"{name} {cost:.1f}" for name, cost in costs.items())
    cores = cores_needed(events_per_second, *costs.values())
    line = (
        f"CPU budget of the target: {target} = {events_per_second:,.0f} events/s at this run's {parts} us"
        f" an event = {cores:.2f} cores; this machine has {os.cpu_count()}"
    )
    if measured is not None:
        line += (f"; the measured {measured:,.0f} events/s kept "
                 f"{cores_needed(measured, *costs.values()):.2f} busy")
    return line

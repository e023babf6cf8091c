"""The benchmarks' CPU budget: the cores a target rate needs at a measured CPU per event."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.bench.machine_cpu import budget_line, cores_needed, process_cpu_seconds, process_tree_cpu_seconds


def test_a_rate_times_the_cpu_each_event_costs_is_the_cores_it_keeps_busy() -> None:
    assert cores_needed(10_000, 100.0) == pytest.approx(1.0)
    assert cores_needed(12_000, 150.0, 40.0) == pytest.approx(2.28)
    assert cores_needed(0, 500.0) == 0.0


def test_the_budget_line_names_each_process_its_sum_and_the_machines_cores() -> None:
    line = budget_line("0.6 of the floor", 12_000, {"worker": 150.0, "Kafka": 40.0})

    assert line == (
        "CPU budget of the target: 0.6 of the floor = 12,000 events/s at this run's worker 150.0 + Kafka 40.0"
        f" us an event = 2.28 cores; this machine has {os.cpu_count()}"
    )


def test_the_budget_line_adds_the_cores_the_measured_rate_kept_busy() -> None:
    line = budget_line("0.6 of the floor", 12_000, {"worker": 150.0, "Kafka": 40.0}, measured=9_000)

    assert line.endswith(f"= 2.28 cores; this machine has {os.cpu_count()}; the measured 9,000 events/s kept 1.71 busy")


def test_a_process_trees_cpu_counts_its_busy_child() -> None:
    spin = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"])
    try:
        deadline = time.monotonic() + 20
        tree = own = 0.0
        while time.monotonic() < deadline and parent.poll() is None:
            tree, own = process_tree_cpu_seconds(parent.pid), process_cpu_seconds(parent.pid) or 0.0
            if tree - own >= 0.3:
                break
            time.sleep(0.05)
        assert tree - own >= 0.3, (tree, own)  # the child's spinning, not the parent's waiting
        assert own < 0.3
    finally:
        parent.wait(20)
    assert process_cpu_seconds(parent.pid) is None  # reaped: gone from /proc

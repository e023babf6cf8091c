"""cio-sink's deliver function: Customer.io's answers as the runtime's outcomes, on a clock of our own.

The transport is a recording stand-in answering what each test says; no HTTP, no Kafka, no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY
from synergy_cio_sink.brands import BrandDelivery
from synergy_cio_sink.coalesce import SnapshotCoalescer
from synergy_cio_sink.delivery import Operation, SinkFunctions, Target
from synergy_cio_sink.mapping import PrivacySettings, item_bytes, map_envelope
from synergy_cio_sink.pauses import WorkspacePauses
from synergy_cio_sink.transport import Answer, Workspace
from synergy_streaming import DELIVERED, Failed, Retry, SplitBatch, Work

TARGET = Target("http://cio.test", "site-unit")


@dataclass
class Directory:
    workspace: Workspace = field(default_factory=lambda: Workspace("http://cio.test", "site-unit", "key-1"))
    forgotten: list[str] = field(default_factory=list)

    async def delivery_for(self, brand_id: str) -> BrandDelivery:
        return BrandDelivery(self.workspace, PrivacySettings())

    def forget(self, brand_ids: Any) -> None:
        self.forgotten.extend(sorted(brand_ids))


@dataclass
class Transport:
    answers: list[Answer]
    bodies: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    async def send_batch(self, workspace: Workspace, body: bytes) -> Answer:
        self.bodies.append(body)
        self.keys.append(workspace.api_key)
        return self.answers.pop(0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def work(user: str, n: int, snapshot: tuple[int, float, int] | None = None) -> Work:
    envelope = {"event_id": f"01HZ00000000000000000000{n:02d}", "brand_id": "7", "type": "track",
                "name": "product_scanned", "identifiers": {"id": user}, "data": {"n": n},
                "timestamp": "2024-05-22T18:35:12Z"}
    if snapshot is not None:
        envelope["data"] = {"user_snapshot": {"economy": {"points_balance": n}}}
    delivery = map_envelope(envelope, PrivacySettings(), from_snapshots=snapshot is not None)
    assert not isinstance(delivery, type(None)) and hasattr(delivery, "v2_item")
    operation = Operation(delivery, item_bytes(delivery), None, snapshot)  # type: ignore[arg-type]
    return Work(key=f"7:{user}", target=TARGET, payload=operation)


def sink(answers: list[Answer]) -> tuple[SinkFunctions, Transport, Directory, Clock]:
    transport, directory, clock = Transport(answers), Directory(), Clock()
    functions = SinkFunctions(directory, transport, "v2", "snapshots", SnapshotCoalescer(interval=60),  # type: ignore[arg-type]
                              WorkspacePauses(probe_interval=10), clock=clock)
    return functions, transport, directory, clock


def paused_gauge() -> float | None:
    return REGISTRY.get_sample_value("synergy_cio_sink_workspace_paused", {"workspace": "site-unit"})


async def test_a_401_pauses_the_workspace_probes_it_and_resumes_without_a_dead_letter() -> None:
    functions, transport, directory, clock = sink([Answer(401, "401:unauthorized"), Answer(200, "200")])
    items = [work("u1", 1), work("u2", 2)]

    refused = await functions.deliver(TARGET, items)
    assert refused == Retry("unauthorized_401", retry_after=10, counts_attempt=False)
    assert paused_gauge() == 1 and directory.forgotten == ["7"]

    clock.now += 4
    waiting = await functions.deliver(TARGET, items)
    assert waiting == Retry("workspace_paused", retry_after=6, counts_attempt=False)
    assert len(transport.bodies) == 1  # nothing sent while paused

    directory.workspace = Workspace("http://cio.test", "site-unit", "key-2")  # fixed in Postgres
    clock.now += 6
    assert await functions.deliver(TARGET, items) == [DELIVERED, DELIVERED]
    assert transport.keys == ["key-1", "key-2"] and paused_gauge() == 0


async def test_a_batch_refused_whole_is_split_and_a_207_fails_only_its_items() -> None:
    functions, transport, _, _ = sink([Answer(400, "400:malformed"),
                                       Answer(207, "207", item_errors={1: "name: too long"})])
    items = [work("u1", 1), work("u2", 2), work("u3", 3)]

    assert await functions.deliver(TARGET, items) == SplitBatch("rejected_400", "400:malformed")
    assert await functions.deliver(TARGET, items) == [DELIVERED, Failed("invalid_item", "name: too long"),
                                                      DELIVERED]
    assert [body.count(b'"action":"event"') for body in transport.bodies] == [3, 3]


async def test_a_superseded_snapshot_is_settled_unsent_and_a_recent_person_waits() -> None:
    functions, transport, _, clock = sink([Answer(200, "200"), Answer(200, "200")])
    older, newer = work("u1", 1, snapshot=(1, 0.0, 10)), work("u1", 2, snapshot=(2, 0.0, 11))
    assert functions.coalescer.admit("7:u1", (1, 0.0, 10)) and functions.coalescer.admit("7:u1", (2, 0.0, 11))

    assert await functions.deliver(TARGET, [older, newer]) == [DELIVERED, DELIVERED]
    assert transport.bodies[0].count(b'"action":"identify"') == 1 and b'"points_balance":2' in transport.bodies[0]

    later = work("u1", 3, snapshot=(3, 0.0, 12))
    assert functions.coalescer.admit("7:u1", (3, 0.0, 12))
    clock.now += 15
    assert await functions.deliver(TARGET, [later]) == [Retry("snapshot_interval", retry_after=45,
                                                              counts_attempt=False)]
    assert len(transport.bodies) == 1
    assert functions.coalescer.admit("7:u1", (1, 0.0, 99)) is False  # a replay of the oldest: dropped

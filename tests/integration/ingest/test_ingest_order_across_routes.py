"""A user's single events and batches land in Kafka in the order the client sent them, whenever it
waited for each answer: a 202 means the request's records are acknowledged, so the next request's
records follow them in the user's partition. (Written for a second, lingering producer for batches,
which was measured and left out; the order must hold with any producer layout.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from .conftest import RunningIngest, read_topic

SEED = Path(__file__).parents[2] / "fixtures" / "seed_examples" / "001_1_product_scanned.json"
pytestmark = pytest.mark.integration


async def test_a_users_singles_and_batches_land_in_the_order_they_were_answered(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str
) -> None:
    brand = await brand_factory()
    seed = json.loads(SEED.read_text())
    user = f"{brand.brand_id}-orderly"

    def event(label: str) -> dict[str, Any]:
        return {**seed, "identifiers": {"id": user}, "event_id": label}

    label_of: dict[str, str] = {}  # the event id ingest answered -> the client's label
    requests: list[str | list[str]] = [
        "single-1",
        ["batch-1", "batch-2", "batch-3"],
        "single-2",
        ["batch-4", "batch-5"],
        "single-3",
        ["batch-6", "batch-7"],
    ]
    for request in requests:
        if isinstance(request, str):
            response = await ingest.client.post(
                "/v1/events", json=event(request), headers=ingest.authed(brand.write_key)
            )
            assert response.status_code == 202, response.text
            label_of[response.json()["event_id"]] = request
        else:
            response = await ingest.client.post(
                "/v1/events/batch",
                json={"batch": [event(label) for label in request]},
                headers=ingest.authed(brand.write_key),
            )
            assert response.status_code == 202, response.text
            accepted = response.json()["accepted"]
            assert [a["index"] for a in accepted] == list(range(len(request)))
            label_of.update({a["event_id"]: request[a["index"]] for a in accepted})

    records = await read_topic(kafka_bootstrap, ingest.topic, 10)
    mine = [r for r in records if r.key == f"{brand.brand_id}:{user}".encode()]
    assert len({r.partition for r in mine}) == 1  # one key, one partition: offsets give the order
    landed = [label_of[orjson.loads(r.value)["event_id"]] for r in sorted(mine, key=lambda r: r.offset)]
    assert landed == [
        "single-1",
        "batch-1",
        "batch-2",
        "batch-3",
        "single-2",
        "batch-4",
        "batch-5",
        "single-3",
        "batch-6",
        "batch-7",
    ]

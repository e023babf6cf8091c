"""Free names (page and screen names, identify traits) never become metric labels in ingest."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import httpx
import pytest

from tests.support import ingest_in_process, label_values, metric_label_sets

pytestmark = pytest.mark.integration


def segment_messages(names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    messages: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        messages.append(("/v1/page", {"type": "page", "userId": "u-1", "name": name, "properties": {name: 1}}))
        messages.append(("/v1/screen", {"type": "screen", "anonymousId": "a-1", "name": name}))
        messages.append(("/v1/identify", {"type": "identify", "userId": "u-1", "traits": {name: name}}))
    return messages


async def test_two_hundred_free_names_add_no_metric_label(
    brand_factory: Any, kafka_bootstrap: str, database_url: str, topic_factory: Any
) -> None:
    brand = await brand_factory()
    basic = "Basic " + base64.b64encode(f"{brand.write_key}:".encode()).decode()
    async with ingest_in_process(kafka_bootstrap, database_url, await topic_factory(1)) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": basic}, timeout=30) as client:
            for path, body in segment_messages([f"warm-up-{secrets.token_hex(4)}"]):
                assert (await client.post(path, json=body)).status_code == 200
            settled = metric_label_sets("synergy_ingest_")
            names = [f"free-name-{secrets.token_hex(6)}" for _ in range(200)]
            for path, body in segment_messages(names):
                answer = await client.post(path, json=body)
                assert answer.status_code == 200, answer.text
    assert metric_label_sets("synergy_ingest_") == settled
    assert not set(names) & label_values("synergy_")

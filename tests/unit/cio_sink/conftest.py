from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent


def envelope_from_seed(seed: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    envelope = {
        "event_id": "01HZ0000000000000000000001",
        "type": "track",
        "brand_id": "7",
        "received_at": "2024-05-22T18:35:13Z",
        "source": "ingest",
        "correlation_id": "corr-1",
        "schema_version": 1,
        **copy.deepcopy(seed),
    }
    envelope.update(overrides)
    return envelope


@pytest.fixture
def product_scanned() -> dict[str, Any]:
    seed = json.loads((HERE.parents[1] / "fixtures" / "seed_examples" / "000_1_product_scanned.json").read_text())
    return envelope_from_seed(seed)

"""The JSON Schemas committed in libs/schemas/jsonschema are what export_json_schemas writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from synergy_schemas.events import CLIENT_EVENTS, RESERVED_EVENTS
from synergy_schemas.export import SCHEMA_BASE_URI, export_json_schemas

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "libs" / "schemas" / "jsonschema"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "seed_examples"
REGENERATE = "run `synergy schemas export libs/schemas/jsonschema`"


def load(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def test_committed_schemas_are_up_to_date(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    expected = {path.name: path.read_bytes() for path in written}
    committed = {path.name: path.read_bytes() for path in COMMITTED.glob("*.json")}
    missing = sorted(set(expected) - set(committed))
    stale = sorted(set(committed) - set(expected))
    changed = sorted(name for name in set(expected) & set(committed) if expected[name] != committed[name])
    assert not (missing or stale or changed), (
        f"libs/schemas/jsonschema is out of date (missing {missing}, not exported any more {stale}, "
        f"changed {changed}): {REGENERATE}"
    )


def test_one_versioned_schema_per_event_plus_the_envelope(tmp_path: Path) -> None:
    names = {path.name for path in export_json_schemas(tmp_path)}
    assert names == {f"{event}.v1.json" for event in CLIENT_EVENTS | RESERVED_EVENTS} | {"envelope.v1.json"}


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "b")}
    assert first == second
    for text in first.values():
        assert text.endswith(b"}\n")
        assert (
            json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
            == text
        )


@pytest.mark.parametrize("event", sorted(CLIENT_EVENTS | RESERVED_EVENTS))
def test_event_schema_describes_the_envelope_with_typed_data(event: str) -> None:
    schema = load(COMMITTED / f"{event}.v1.json")
    assert schema["$id"] == f"{SCHEMA_BASE_URI}{event}.v1.json"
    assert schema["title"] == event
    properties = schema["properties"]
    assert {"event_id", "type", "brand_id", "identifiers", "timestamp", "received_at", "source"} <= set(
        properties
    )
    assert properties["name"]["const"] == event
    data_ref = properties["data"]["$ref"].removeprefix("#/$defs/")
    assert schema["$defs"][data_ref]["additionalProperties"] is False
    assert "data" in schema["required"]


def test_envelope_schema() -> None:
    schema = load(COMMITTED / "envelope.v1.json")
    assert schema["$id"] == f"{SCHEMA_BASE_URI}envelope.v1.json"
    assert schema["title"] == "envelope"


def test_seed_examples_validate_against_exported_schemas() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    engine_fields = {
        "event_id": "01J0000000000000000000000A",
        "brand_id": "brand-1",
        "received_at": "2024-05-22T18:35:13Z",
        "source": "ingest",
        "correlation_id": "corr-1",
    }
    aliases = {"wishlist_added": "wishlist_item_added"}
    for path in sorted(FIXTURES.glob("00[01]_[0-9]*.json")):
        example = load(path)
        name = aliases.get(example["name"], example["name"])
        message = {**example, **engine_fields, "name": name}
        validator = jsonschema_rs.validator_for(load(COMMITTED / f"{name}.v1.json"))
        validator.validate(message)
        assert not validator.is_valid({**message, "data": {**message["data"], "surprise": 1}})
        assert not validator.is_valid({**message, "name": "something_else"})

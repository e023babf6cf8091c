"""Versioned JSON Schemas of the envelope and of every event: `<event_name>.v1.json`.

uv run python -m synergy_schemas.export libs/schemas/jsonschema
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from synergy_schemas.envelope import SCHEMA_VERSION, Envelope
from synergy_schemas.events import CLIENT_EVENTS, EVENT_ALIASES, EVENT_DATA_MODELS, RESERVED_EVENTS

SCHEMA_BASE_URI = "https://schemas.synergy-engine.dev/"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def event_envelope_model(event_name: str) -> type[Envelope]:
    """The envelope of one event: `name` fixed to it and `data` constrained to its model."""
    data_model: type[BaseModel] = EVENT_DATA_MODELS[event_name]
    name_type: Any = Literal[event_name]
    return create_model(
        f"{_camel(event_name)}Envelope",
        __base__=Envelope,
        name=(name_type, Field(description="the canonical event name")),
        data=(data_model, ...),
    )


def event_json_schema(event_name: str) -> dict[str, Any]:
    schema = event_envelope_model(event_name).model_json_schema()
    aliases = sorted(alias for alias, canonical in EVENT_ALIASES.items() if canonical == event_name)
    audience = "reserved: only the engine emits it" if event_name in RESERVED_EVENTS else "client event"
    description = f"The envelope of `{event_name}` ({audience})."
    if aliases:
        description += f" Clients may send it as {', '.join(f'`{a}`' for a in aliases)}."
    return _with_header(schema, event_name, event_name, description)


def envelope_json_schema() -> dict[str, Any]:
    schema = Envelope.model_json_schema()
    return _with_header(schema, "envelope", "envelope", "Every message on an events-like topic.")


def _with_header(schema: dict[str, Any], file_stem: str, title: str, description: str) -> dict[str, Any]:
    return {
        **schema,
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE_URI}{file_stem}.v{SCHEMA_VERSION}.json",
        "title": title,
        "description": description,
    }


def render_json_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered_json_schemas() -> dict[str, str]:
    """File name -> file text, for every schema export_json_schemas writes."""
    files = {f"envelope.v{SCHEMA_VERSION}.json": render_json_schema(envelope_json_schema())}
    for event_name in sorted(CLIENT_EVENTS | RESERVED_EVENTS):
        files[f"{event_name}.v{SCHEMA_VERSION}.json"] = render_json_schema(event_json_schema(event_name))
    return files


def export_json_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in sorted(rendered_json_schemas().items()):
        path = directory / file_name
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m synergy_schemas.export DIRECTORY", file=sys.stderr)
        return 2
    for path in export_json_schemas(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

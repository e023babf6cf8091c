"""Extract the JSON examples of the seed documents into test fixtures.

    uv run python -m synergy_schemas.seed_examples ../shared/seeds tests/fixtures/seed_examples

Seed examples are JSON with `// …` (and, in seed 004's Python blocks, `# …`) comments, sometimes after
a request line such as `POST /webhooks/customer-io`. Code blocks that are not JSON are skipped.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FIXTURE_SEEDS = ("000", "001", "004")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
_BOLD_LABEL = re.compile(r"^\*\*([^*]+?):?\*\*\s*$", re.MULTILINE)

ExampleKind = Literal["event", "webhook", "payload"]


def strip_json_comments(text: str) -> str:
    """Remove `//` and `#` comments outside strings, and the trailing commas they leave."""
    out: list[str] = []
    in_string = False
    i = 0
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif char == "#" or text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(char)
        i += 1
    return _strip_trailing_commas("".join(out))


def _strip_trailing_commas(text: str) -> str:
    out: list[str] = []
    in_string = False
    for i, char in enumerate(text):
        if in_string:
            if char == '"' and not _escaped(text, i):
                in_string = False
        elif char == '"':
            in_string = True
        elif char == ",":
            rest = text[i + 1 :].lstrip()
            if rest[:1] in ("}", "]"):
                continue
        out.append(char)
    return "".join(out)


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index - 1 - backslashes >= 0 and text[index - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def parse_example(block: str) -> dict[str, Any] | None:
    """The JSON object a code block holds, or None when the block is not one JSON object.

    Lines before the object's first line (an HTTP request line) are allowed if they hold no brace.
    """
    text = strip_json_comments(block)
    lines = text.splitlines()
    start = next((n for n, line in enumerate(lines) if line.lstrip().startswith("{")), None)
    if start is None or any("{" in line or "[" in line for line in lines[:start]):
        return None
    body = "\n".join(lines[start:]).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _labelled_examples(seed_text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    heading = ""
    label = ""
    position = 0
    for fence in _FENCE.finditer(seed_text):
        prose = seed_text[position : fence.start()]
        position = fence.end()
        for match in sorted(
            [*_HEADING.finditer(prose), *_BOLD_LABEL.finditer(prose)], key=lambda m: m.start()
        ):
            if match.re is _HEADING:
                heading, label = match.group(1), ""
            else:
                label = match.group(1)
        example = parse_example(fence.group(1))
        if example is not None:
            yield _slug(f"{heading} {label}"), example


def _slug(text: str) -> str:
    text = re.sub(r"^[\d.]+\s+", "", text.strip())
    text = re.sub(r"([a-z])([A-Z])", r"\1_\2", text)
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def extract_examples(seed_text: str) -> list[dict[str, Any]]:
    """Every JSON example of a seed document, comments stripped, in document order."""
    return [example for _, example in _labelled_examples(seed_text)]


@dataclass(frozen=True)
class SeedExample:
    seed: str
    kind: ExampleKind
    number: int
    name: str
    body: dict[str, Any]

    @property
    def fixture_name(self) -> str:
        if self.kind == "webhook":
            return f"{self.seed}_webhook_{self.number}.json"
        return f"{self.seed}_{self.number}_{self.name}.json"

    def render(self) -> str:
        return json.dumps(self.body, indent=2, ensure_ascii=False) + "\n"


def classify(example: dict[str, Any]) -> ExampleKind:
    if isinstance(example.get("name"), str) and isinstance(example.get("data"), dict):
        return "event"
    if "predictions" in example:
        return "webhook"
    return "payload"


def seed_examples(seed_id: str, seed_text: str) -> list[SeedExample]:
    examples: list[SeedExample] = []
    counters: dict[str, int] = {"webhook": 0, "other": 0}
    for label, body in _labelled_examples(seed_text):
        kind = classify(body)
        counter = "webhook" if kind == "webhook" else "other"
        counters[counter] += 1
        name = body["name"] if kind == "event" else label
        examples.append(SeedExample(seed_id, kind, counters[counter], name, body))
    return examples


def seed_examples_in(seeds_dir: Path, seed_ids: tuple[str, ...] = FIXTURE_SEEDS) -> list[SeedExample]:
    examples: list[SeedExample] = []
    for seed_id in seed_ids:
        (path,) = sorted(seeds_dir.glob(f"{seed_id}_*.txt"))
        examples.extend(seed_examples(seed_id, path.read_text(encoding="utf-8")))
    return examples


def render_fixtures(seeds_dir: Path) -> dict[str, str]:
    return {example.fixture_name: example.render() for example in seed_examples_in(seeds_dir)}


def write_fixtures(seeds_dir: Path, fixtures_dir: Path) -> list[Path]:
    """Write the fixtures, removing stale ones, and return the written paths."""
    fixtures_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_fixtures(seeds_dir)
    for stale in fixtures_dir.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    written = []
    for name, text in sorted(rendered.items()):
        path = fixtures_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m synergy_schemas.seed_examples SEEDS_DIR FIXTURES_DIR", file=sys.stderr)
        return 2
    for path in write_fixtures(Path(args[0]), Path(args[1])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

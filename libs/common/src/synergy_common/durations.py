"""Durations as written in the environment: `90s`, `15m`, `24h`, `7d`."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(text: str) -> timedelta:
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 90s, 15m, 24h, 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])

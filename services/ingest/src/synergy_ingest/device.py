"""Device facts derived from a User-Agent header, without calling any outside service."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from user_agents import parse as parse_user_agent

MAX_USER_AGENT_LENGTH = 512


@lru_cache(maxsize=4096)
def device_from_user_agent(user_agent: str) -> dict[str, Any]:
    user_agent = user_agent[:MAX_USER_AGENT_LENGTH]
    parsed = parse_user_agent(user_agent)
    if parsed.is_tablet:
        device_type = "tablet"
    elif parsed.is_mobile:
        device_type = "mobile"
    elif parsed.is_pc:
        device_type = "desktop"
    else:
        device_type = "unknown"
    device: dict[str, Any] = {"device_type": device_type, "user_agent": user_agent}
    if parsed.os.family and parsed.os.family != "Other":
        device["os"] = parsed.os.family
    if parsed.browser.family and parsed.browser.family != "Other":
        device["browser"] = parsed.browser.family
    return device

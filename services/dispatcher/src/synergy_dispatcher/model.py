"""Destinations as the dispatcher sees them, and which of them an event goes to. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DestinationType = Literal["webhook", "posthog"]
State = Literal["active", "paused", "disabled"]
DESTINATION_TYPES: tuple[DestinationType, ...] = ("webhook", "posthog")
DEFAULT_POSTHOG_HOST = "https://us.i.posthog.com"


@dataclass(frozen=True)
class Destination:
    id: str
    brand_id: str | None  # None: the deployment's own, which gets every brand's events
    name: str
    type: DestinationType
    settings: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, Any] = field(default_factory=dict)
    state: State = "active"
    disabled_reason: str | None = None

    @property
    def label(self) -> str:
        """The destination's name in metrics and dead letters: `<type>:<id>`."""
        return f"{self.type}:{self.id}"

    @property
    def url(self) -> str:
        return str(self.settings.get("url", ""))

    @property
    def posthog_host(self) -> str:
        return str(self.settings.get("host") or DEFAULT_POSTHOG_HOST).rstrip("/")

    @property
    def webhook_secrets(self) -> list[str]:
        return [str(s) for s in self.secrets.get("signing_secrets", [])]

    @property
    def api_key(self) -> str:
        return str(self.secrets.get("api_key", ""))


def destinations_for(brand_id: str, destinations: Iterable[Destination]) -> list[Destination]:
    """The brand's own destinations and the deployment's; disabled ones get nothing.

    A paused destination still gets its events: they wait in its queue until it answers again.
    """
    return [d for d in destinations
            if d.state != "disabled" and (d.brand_id is None or d.brand_id == str(brand_id))]

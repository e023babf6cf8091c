"""What ingest knows about a request besides its body."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RequestContext:
    brand_id: str
    received_at: datetime
    correlation_id: str
    user_agent: str | None
    client_ip: str | None
    source: str = "ingest"

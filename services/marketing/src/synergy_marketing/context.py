"""What the routes share at run time: settings, the Postgres pool, the publisher and the key check.

A router gets it with `context: MarketingContext = Depends(marketing_context)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from fastapi import Request
from synergy_common.http import ProblemError, WriteKeyAuthenticator

from synergy_marketing.publisher import MarketingPublisher
from synergy_marketing.settings import MarketingSettings


@dataclass
class MarketingContext:
    settings: MarketingSettings
    pool: asyncpg.Pool
    publisher: MarketingPublisher
    authenticator: WriteKeyAuthenticator


def marketing_context(request: Request) -> MarketingContext:
    context: MarketingContext | None = getattr(request.app.state, "marketing", None)
    if context is None:
        raise ProblemError(503, "Starting", "the service is still starting", headers={"Retry-After": "1"})
    return context

"""`python -m synergy_analytics`: the analytics service on ANALYTICS_HOST:ANALYTICS_PORT (0.0.0.0:8006)."""

from __future__ import annotations

import uvicorn

from synergy_analytics.settings import AnalyticsSettings


def main() -> None:
    settings = AnalyticsSettings()
    uvicorn.run(
        "synergy_analytics.app:create_app",
        factory=True,
        host=settings.analytics_host,
        port=settings.analytics_port,
        access_log=False,
    )


if __name__ == "__main__":
    main()

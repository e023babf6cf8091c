"""`python -m synergy_insights`: serve the insights API on INSIGHTS_HOST:INSIGHTS_PORT (0.0.0.0:8001)."""

from __future__ import annotations

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "synergy_insights.app:create_app",
        factory=True,
        host=os.environ.get("INSIGHTS_HOST", "0.0.0.0"),
        port=int(os.environ.get("INSIGHTS_PORT", "8001")),
        access_log=False,
    )


if __name__ == "__main__":
    main()

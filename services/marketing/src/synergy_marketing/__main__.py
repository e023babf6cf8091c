"""`python -m synergy_marketing`: serve marketing on MARKETING_HOST:MARKETING_PORT (0.0.0.0:8002)."""

from __future__ import annotations

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "synergy_marketing.app:create_app",
        factory=True,
        host=os.environ.get("MARKETING_HOST", "0.0.0.0"),
        port=int(os.environ.get("MARKETING_PORT", "8002")),
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()

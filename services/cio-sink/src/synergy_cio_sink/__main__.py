"""`uv run python -m synergy_cio_sink`: the Customer.io sink, ops on :8003."""

from __future__ import annotations

import asyncio

from synergy_common.logging import configure_logging

from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.service import serve


def main() -> None:
    settings = SinkSettings()
    configure_logging("cio-sink")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

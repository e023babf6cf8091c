"""`python -m synergy_dispatcher`: the dispatcher on DISPATCHER_HOST:DISPATCHER_PORT (0.0.0.0:8005)."""

from __future__ import annotations

import uvicorn

from synergy_dispatcher.settings import DispatcherSettings


def main() -> None:
    settings = DispatcherSettings()
    uvicorn.run("synergy_dispatcher.app:create_app", factory=True, host=settings.dispatcher_host,
                port=settings.dispatcher_port, access_log=False)


if __name__ == "__main__":
    main()

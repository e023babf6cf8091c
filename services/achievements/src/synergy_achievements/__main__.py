"""`synergy-achievements` / `python -m synergy_achievements`: run one achievements worker (HTTP on 8004)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading

import faust
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_common.logging import configure_logging
from synergy_schemas.topics import EVENTS

from synergy_achievements.settings import settings_from_env
from synergy_achievements.worker import AchievementsWorker, ensure_topics

FORCED_EXIT_CODE = 75


class BoundedShutdownWorker(faust.Worker):
    """SIGTERM/SIGINT start faust's clean stop, and a timer that ends the process if the stop hangs
    (e.g. Kafka is gone and the consumer waits on it). Safe: nothing is acknowledged before it is done."""

    def __init__(self, *args: object, shutdown_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._shutdown_timeout = shutdown_timeout
        self._deadline: threading.Timer | None = None

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(self._shutdown_timeout, self._force_exit)
            self._deadline.daemon = True
            self._deadline.start()

    def _force_exit(self) -> None:
        print(f"achievements: clean stop took over {self._shutdown_timeout}s, exiting", file=sys.stderr,
              flush=True)
        os._exit(FORCED_EXIT_CODE)

    def _on_sigterm(self) -> None:
        self._arm_deadline()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_deadline()
        super()._on_sigint()


def main() -> None:
    settings = settings_from_env()
    configure_logging("achievements", settings.log_level)
    # aiokafka builds a DEBUG record for every message it sends: ~10% of the worker's time when enabled.
    level = logging.getLevelName(settings.log_level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, level if isinstance(level, int) else 0))
    partitions = asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, EVENTS.name))
    worker = AchievementsWorker(settings, partitions)
    tune_garbage_collector()
    BoundedShutdownWorker(
        worker.app, loglevel=settings.log_level.lower(), quiet=True,
        shutdown_timeout=settings.seconds(settings.achievements_shutdown_timeout),
    ).execute_from_commandline()


if __name__ == "__main__":
    main()

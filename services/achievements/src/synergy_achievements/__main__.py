"""`synergy-achievements` / `python -m synergy_achievements`: run one achievements worker (HTTP on 8004)."""

from __future__ import annotations

import asyncio
import logging

import faust
from synergy_common.logging import configure_logging
from synergy_schemas.topics import EVENTS

from synergy_achievements.settings import settings_from_env
from synergy_achievements.worker import AchievementsWorker, ensure_topics


def main() -> None:
    settings = settings_from_env()
    configure_logging("achievements", settings.log_level)
    # aiokafka builds a DEBUG record for every message it sends: ~10% of the worker's time when enabled.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, logging.getLevelName(settings.log_level.upper())))
    partitions = asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, EVENTS.name))
    worker = AchievementsWorker(settings, partitions)
    faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()

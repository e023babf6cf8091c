"""`synergy-achievements` / `python -m synergy_achievements`: run one achievements worker (HTTP on 8004)."""

from __future__ import annotations

import asyncio

import faust
from synergy_common.logging import configure_logging
from synergy_schemas.topics import EVENTS

from synergy_achievements.settings import settings_from_env
from synergy_achievements.worker import AchievementsWorker, ensure_topics


def main() -> None:
    settings = settings_from_env()
    configure_logging("achievements")
    partitions = asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, EVENTS.name))
    worker = AchievementsWorker(settings, partitions)
    faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()

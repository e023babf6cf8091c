"""`synergy dlq list|replay`: every service's dead letters, from Postgres (`dlq_messages`).

A replay publishes each letter back to its source topic, with `dlq_replay_for=<service>`: only the
service that dead-lettered it processes it again, through its ordered path (per-key order, and for
cio-sink snapshot coalescing), exactly like a message consumed the first time.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from synergy_common.db import create_pool
from synergy_common.durations import parse_duration
from synergy_common.kafka import durable_producer, publish_all
from synergy_common.settings import CommonSettings

from synergy_streaming.dlq import list_dead_letters, mark_replayed, replay_message


def _since(value: str | None) -> datetime | None:
    """`--since 2h` (a duration back from now) or an ISO timestamp."""
    if not value:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _print_rows(header: list[str], rows: list[list[str]]) -> None:
    """A table on a terminal; tab-separated lines, one per row, when piped (grep, cut, awk)."""
    console = Console()
    if not console.is_terminal:
        for cells in (header, *rows):
            click.echo("\t".join(cells))
        return
    table = Table(*header)
    for cells in rows:
        table.add_row(*cells)
    console.print(table)


@click.group()
def dlq() -> None:
    """Dead letters of every service (cio-sink, achievements, ...)."""


SINCE_HELP = "a duration back from now (24h) or an ISO timestamp"
SERVICE_HELP = "only this service's letters (cio-sink, achievements, ...)"


@dlq.command("list")
@click.option("--service", default=None, help=SERVICE_HELP)
@click.option("--since", default=None, help=SINCE_HELP)
@click.option("--reason", default=None, help="reason prefix, e.g. invalid_item or retries_exhausted")
@click.option("--all", "include_replayed", is_flag=True, help="include dead letters already replayed")
@click.option("--limit", default=100, show_default=True)
def dlq_list(service: str | None, since: str | None, reason: str | None, include_replayed: bool,
             limit: int) -> None:
    """Show dead letters, oldest first."""

    async def run() -> list[dict[str, Any]]:
        pool = await create_pool(CommonSettings().database_url)
        try:
            return await list_dead_letters(pool, service, _since(since), reason, include_replayed, limit)
        finally:
            await pool.close()

    rows = asyncio.run(run())
    _print_rows(
        ["id", "created", "reason", "brand", "event id", "source", "attempts", "replayed", "service",
         "destination"],
        [[str(row["id"]), row["created_at"].isoformat(timespec="seconds"), row["reason"],
          str(row["brand_id"] or ""), row["event_id"] or "",
          f"{row['source_topic']}/{row['source_partition']}@{row['source_offset']}", str(row["attempts"]),
          row["replayed_at"].isoformat(timespec="seconds") if row["replayed_at"] else "", row["service"],
          row["destination"] or ""]
         for row in rows],
    )
    click.echo(f"{len(rows)} dead letter(s)")


@dlq.command("replay")
@click.option("--service", default=None, help=SERVICE_HELP)
@click.option("--since", default=None, help=SINCE_HELP)
@click.option("--reason", default=None, help="reason prefix, e.g. hot_key_parked")
@click.option("--limit", default=None, type=int)
def dlq_replay(service: str | None, since: str | None, reason: str | None, limit: int | None) -> None:
    """Publish dead letters back to their source topics, in their original order, for their own service."""
    settings = CommonSettings()

    async def run() -> tuple[int, int]:
        pool = await create_pool(settings.database_url)
        producer = durable_producer(settings.kafka_bootstrap_servers, client_id="synergy-dlq-replay")
        sent = failed = 0
        try:
            await producer.start()
            rows = await list_dead_letters(pool, service, _since(since), reason, False, limit)
            # On stderr, so stdout keeps only the summary; no bar at all when stderr is not a terminal.
            progress_console = Console(stderr=True)
            with Progress(console=progress_console, disable=not progress_console.is_terminal) as progress:
                task = progress.add_task("replaying", total=len(rows))
                for row in rows:
                    error = None
                    try:
                        await publish_all(producer, [replay_message(row)])
                    except Exception as exc:
                        error = f"publish failed: {exc!r}"[:500]
                    await mark_replayed(pool, row["id"], error)
                    sent, failed = (sent + 1, failed) if error is None else (sent, failed + 1)
                    progress.advance(task)
        finally:
            await producer.stop()
            await pool.close()
        return sent, failed

    sent, failed = asyncio.run(run())
    click.echo(f"replayed {sent}, failed {failed}")
    if failed:
        raise SystemExit(1)

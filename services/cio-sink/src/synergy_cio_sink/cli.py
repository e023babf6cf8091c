"""`synergy dlq list|replay`: the sink's dead letters, from Postgres.

Replay sends each dead letter straight to Customer.io again (same event id, so nothing is counted
twice there), not back to its source topic, whose other consumers must not see it twice.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from synergy_common.db import create_pool
from synergy_common.durations import parse_duration
from synergy_schemas import topics

from synergy_cio_sink.brands import BrandDirectory
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.dlq import list_dead_letters, mark_replayed
from synergy_cio_sink.mapping import Delivery, map_envelope
from synergy_cio_sink.rate_limit import AdaptiveRateLimit
from synergy_cio_sink.transport import CustomerIoTransport


def _since(value: str | None) -> datetime | None:
    """`--since 2h` (a duration back from now) or an ISO timestamp."""
    if not value:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.group()
def dlq() -> None:
    """Dead letters of the Customer.io sink."""


@dlq.command("list")
@click.option("--since", default=None, help="a duration back from now (24h) or an ISO timestamp")
@click.option("--reason", default=None, help="reason prefix, e.g. invalid_item or retries_exhausted")
@click.option("--all", "include_replayed", is_flag=True, help="include dead letters already replayed")
@click.option("--limit", default=100, show_default=True)
def dlq_list(since: str | None, reason: str | None, include_replayed: bool, limit: int) -> None:
    """Show dead letters, oldest first."""

    async def run() -> list[dict[str, Any]]:
        pool = await create_pool(SinkSettings().database_url)
        try:
            return await list_dead_letters(pool, _since(since), reason, include_replayed, limit)
        finally:
            await pool.close()

    rows = asyncio.run(run())
    _print_rows(["id", "created", "reason", "brand", "event id", "source", "attempts", "replayed"], [
        [str(row["id"]), row["created_at"].isoformat(timespec="seconds"), row["reason"],
         str(row["brand_id"] or ""), row["event_id"] or "",
         f"{row['source_topic']}/{row['source_partition']}@{row['source_offset']}", str(row["attempts"]),
         row["replayed_at"].isoformat(timespec="seconds") if row["replayed_at"] else ""]
        for row in rows
    ])
    click.echo(f"{len(rows)} dead letter(s)")


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


@dlq.command("replay")
@click.option("--since", default=None, help="a duration back from now (24h) or an ISO timestamp")
@click.option("--reason", default=None, help="reason prefix, e.g. hot_user_parked")
@click.option("--limit", default=None, type=int)
def dlq_replay(since: str | None, reason: str | None, limit: int | None) -> None:
    """Send dead letters to Customer.io again, in their original order, and mark those accepted."""
    settings = SinkSettings()

    async def run() -> tuple[int, int]:
        pool = await create_pool(settings.database_url)
        transport = CustomerIoTransport(settings.cio_request_timeout)
        directory = BrandDirectory(pool, settings)
        limits: dict[str, AdaptiveRateLimit] = {}
        sent = failed = 0
        try:
            rows = await list_dead_letters(pool, _since(since), reason, False, limit)
            # On stderr, so stdout keeps only the summary; no bar at all when stderr is not a terminal.
            progress_console = Console(stderr=True)
            with Progress(console=progress_console, disable=not progress_console.is_terminal) as progress:
                task = progress.add_task("replaying", total=len(rows))
                for row in rows:
                    error = await _replay_one(row, directory, transport, limits, settings)
                    await mark_replayed(pool, row["id"], error)
                    sent, failed = (sent + 1, failed) if error is None else (sent, failed + 1)
                    progress.advance(task)
        finally:
            await transport.close()
            await pool.close()
        return sent, failed

    sent, failed = asyncio.run(run())
    click.echo(f"replayed {sent}, failed {failed}")
    if failed:
        raise SystemExit(1)


async def _replay_one(row: dict[str, Any], directory: BrandDirectory, transport: CustomerIoTransport,
                      limits: dict[str, AdaptiveRateLimit], settings: SinkSettings) -> str | None:
    try:
        envelope = orjson.loads(row["payload"])
        brand = await directory.delivery_for(str(envelope["brand_id"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return f"unreadable: {exc!r}"
    if brand.workspace is None:
        return "no Customer.io credentials for this brand"
    from_snapshots = row["source_topic"] == topics.SNAPSHOTS.name
    result = map_envelope(envelope, brand.privacy, from_snapshots=from_snapshots)
    if not isinstance(result, Delivery):
        return f"still not sendable: {getattr(result, 'reason', result)}"
    limit = limits.setdefault(brand.workspace.site_id, AdaptiveRateLimit(settings.cio_rate_limit))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, limit.reserve(loop.time()) - loop.time()))
    if settings.cio_api == "v1":
        answer = await transport.send_call(brand.workspace, result.v1_call)
    else:
        body = b'{"batch":[' + orjson.dumps(result.v2_item) + b"]}"
        answer = await transport.send_batch(brand.workspace, body)
    if answer.status == 429:
        limit.throttled(loop.time(), answer.retry_after)
    if answer.accepted and not answer.item_errors:
        return None
    return answer.reason if not answer.item_errors else "; ".join(answer.item_errors.values())

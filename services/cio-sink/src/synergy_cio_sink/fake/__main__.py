"""`uv run python -m synergy_cio_sink.fake --port 8090`: a local Customer.io to point the sink at."""

from __future__ import annotations

import click
import uvicorn

from synergy_cio_sink.fake.app import CustomerIoFake


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--site-id", default=None, help="Accept only this site id (with --api-key).")
@click.option("--api-key", default=None)
@click.option("--rate-cap", default=None, type=float, help="Answer 429 over this many requests/s.")
@click.option("--latency", default=0.0, type=float, help="Seconds added to every answer.")
def main(host: str, port: int, site_id: str | None, api_key: str | None, rate_cap: float | None,
         latency: float) -> None:
    fake = CustomerIoFake({site_id: api_key or ""} if site_id else None)
    fake.faults.rate_cap = rate_cap
    fake.faults.latency = latency
    click.echo(f"Customer.io fake on http://{host}:{port} — see what it received at /_fake/received")
    uvicorn.run(fake.app, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""Run a fake receiver in a process of its own (benchmarks): `python -m tests.fakes.serve webhook|posthog`.

Prints its port on the first line; `GET /stats` answers what it received and the CPU it used.

The fake keeps every item it ingested (deduplication, order): with the default collector thresholds
each young collection of a parsed 2 MB `/batch/` body traverses tens of thousands of fresh objects and
the full ones walk all that was ingested (orjson.loads ~3x slower here). So the collector is tuned as
the services tune theirs, and what a handled request left alive is frozen out of its view.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time

from synergy_common.gc_tuning import tune_garbage_collector

from tests.fakes.http_server import HttpServer, Request, Response
from tests.fakes.posthog import PostHogFake
from tests.fakes.webhook_receiver import WebhookReceiver


async def main(kind: str, secret: str, api_key: str) -> None:
    receiver = WebhookReceiver([secret]) if kind == "webhook" else None
    posthog = PostHogFake({api_key}) if kind == "posthog" else None

    def received() -> int:
        return len(receiver.accepted) if receiver else len(posthog.order)  # type: ignore[union-attr]

    async def handle(request: Request) -> Response:
        if request.path == "/stats":
            return Response(200, json.dumps({"received": received(), "cpu": time.process_time(),
                                             "refused": receiver.refused_signatures if receiver else 0,
                                             "duplicates": posthog.duplicates if posthog else 0}).encode())
        if receiver is not None:
            response = await receiver._handle(request)
        else:
            response = await posthog._handle(request)  # type: ignore[union-attr]
        gc.freeze()  # what this request kept (ingested items) lives as long as the process
        return response

    tune_garbage_collector()
    server = await HttpServer(handle).start()
    print(server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["webhook", "posthog"])
    parser.add_argument("--secret", default="")
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()
    asyncio.run(main(args.kind, args.secret, args.api_key))

"""A webhook endpoint that checks Standard Webhooks signatures with its own HMAC code.

It keeps every delivery it accepted (in arrival order) and every one it refused, and answers what
the test scripts: 2xx, 410, 429 + Retry-After, 5xx, other 4xx, per event or for a while.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http_server import HttpServer, Request, Response

TOLERANCE_SECONDS = 300


def verify_standard_webhook(secrets: list[str], headers: dict[str, str], body: bytes,
                            now: float | None = None) -> str | None:
    """None when valid; else why not. Independent of the dispatcher's signing code on purpose."""
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not message_id or not timestamp or not signatures:
        return "missing header"
    if not timestamp.isdigit():
        return "bad timestamp"
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE_SECONDS:
        return "timestamp outside tolerance"
    signed = message_id.encode() + b"." + timestamp.encode() + b"." + body
    for secret in secrets:
        key = base64.b64decode(secret.split("_", 1)[1] if secret.startswith("whsec_") else secret)
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for candidate in signatures.split(" "):
            version, _, value = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return None
    return "no matching signature"


@dataclass
class Delivery:
    event_id: str
    timestamp: int
    signature_header: str
    payload: dict[str, Any]
    status: int


Responder = Callable[[Delivery], Response | None]


@dataclass
class WebhookReceiver:
    secrets: list[str]
    accepted: list[Delivery] = field(default_factory=list)  # answered 2xx
    answered: list[Delivery] = field(default_factory=list)  # every well-signed request, whatever answered
    refused_signatures: int = 0
    responder: Responder | None = None
    delay: float = 0.0
    server: HttpServer | None = None
    port: int = 0

    async def start(self) -> WebhookReceiver:
        self.server = await HttpServer(self._handle, port=self.port).start()
        self.port = self.server.port
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    async def restart(self) -> None:
        await self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def accepted_ids(self) -> list[str]:
        return [d.event_id for d in self.accepted]

    async def _handle(self, request: Request) -> Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        problem = verify_standard_webhook(self.secrets, request.headers, request.body)
        if problem is not None:
            self.refused_signatures += 1
            return Response(401, json.dumps({"error": problem}).encode())
        delivery = Delivery(request.headers["webhook-id"], int(request.headers["webhook-timestamp"]),
                            request.headers["webhook-signature"], json.loads(request.body), 200)
        scripted = self.responder(delivery) if self.responder else None
        response = scripted or Response(200, b'{"ok":true}')
        delivery.status = response.status
        self.answered.append(delivery)
        if 200 <= response.status < 300:
            self.accepted.append(delivery)
        return response


def answer_for_a_while(seconds: float, status: int, retry_after: str | None = None) -> Responder:
    """Answer `status` for `seconds` from the first request on, then 200."""
    started: list[float] = []

    def respond(_: Delivery) -> Response | None:
        now = time.monotonic()
        if not started:
            started.append(now)
        if now - started[0] < seconds:
            return Response(status, b'{"error":"unavailable"}',
                            {"retry-after": retry_after} if retry_after else {})
        return None

    return respond

"""HTTP to Customer.io: one keep-alive httpx client, v2 batches and v1 calls, answers classified."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import orjson
from synergy_streaming.retry import is_retryable_status, parse_retry_after

from synergy_cio_sink.mapping import V1Call


@dataclass(frozen=True)
class Workspace:
    """A Customer.io workspace: where to send, as whom. The rate limit is kept per workspace."""

    base_url: str
    site_id: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (timeout, network error)
    reason: str  # "200", "429", "timeout", "network_error", ...
    retry_after: float | None = None
    item_errors: dict[int, str] = field(default_factory=dict)  # v2 207: batch index -> message

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or is_retryable_status(self.status)


class CustomerIoTransport:
    def __init__(self, timeout: float = 10.0, max_connections: int = 64) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": "synergy-cio-sink/1"},
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _send(self, workspace: Workspace, method: str, path: str, body: bytes) -> Answer:
        try:
            response = await self._client.request(
                method, workspace.base_url + path, content=body,
                headers={"Content-Type": "application/json"}, auth=(workspace.site_id, workspace.api_key),
            )
        except httpx.TimeoutException:
            return Answer(None, "timeout")
        except httpx.TransportError:
            return Answer(None, "network_error")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        item_errors: dict[int, str] = {}
        if response.status_code == 207:
            try:
                errors = orjson.loads(response.content).get("errors") or []
                item_errors = {
                    int(e["batch_index"]): f"{e.get('field', '')}: {e.get('message', e.get('reason', ''))}"
                    for e in errors if "batch_index" in e
                }
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                item_errors = {}
        detail = "" if response.is_success else f":{response.text[:200]}"
        return Answer(response.status_code, f"{response.status_code}{detail}", retry_after, item_errors)

    async def send_batch(self, workspace: Workspace, body: bytes) -> Answer:
        return await self._send(workspace, "POST", "/api/v2/batch", body)

    async def send_call(self, workspace: Workspace, call: V1Call) -> Answer:
        return await self._send(workspace, call.method, call.path, orjson.dumps(call.body))

"""Reading a request body safely: content type, size caps while streaming and after gzip, JSON."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request
from synergy_common.http import ProblemError

JSON_TYPES = ("application/json",)


def _is_json_content_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in JSON_TYPES:
        return True
    return media_type.startswith("application/") and media_type.endswith("+json")


def _too_large(limit: int, what: str = "the body") -> ProblemError:
    return ProblemError(413, "Payload too large", f"{what} may be at most {limit} bytes", field="body")


async def read_body(request: Request, max_bytes: int, any_content_type: bool = False) -> bytes:
    """The body, gunzipped when it says so, at most `max_bytes` both as sent and once decompressed.

    The native routes want a JSON Content-Type. The Segment-compatible ones take any (or none), as
    Segment's and RudderStack's servers do: their SDKs send gzip with text/plain and the like.
    """
    content_type = request.headers.get("content-type", "")
    if not any_content_type and not _is_json_content_type(content_type):
        raise ProblemError(
            415,
            "Unsupported media type",
            f"send Content-Type: application/json (got {content_type!r})",
            field="Content-Type",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body, max_bytes)
    elif encoding not in ("identity", ""):
        raise ProblemError(
            415, "Unsupported content encoding", f"{encoding!r} is not supported", field="Content-Encoding"
        )
    if not body:
        raise ProblemError(400, "Empty body", "the body must be a JSON object", field="body")
    return body


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, "Malformed JSON", str(exc), field="body") from exc


async def read_json_body(request: Request, max_bytes: int, any_content_type: bool = False) -> Any:
    return parse_json(await read_body(request, max_bytes, any_content_type))


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    """Inflates every gzip member (RFC 1952 allows several), never more than `max_bytes + 1` bytes."""
    inflated = b""
    rest = body
    while rest:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            inflated += decompressor.decompress(rest, max_bytes + 1 - len(inflated))
        except zlib.error as exc:
            raise ProblemError(400, "Malformed gzip body", str(exc), field="body") from exc
        if len(inflated) > max_bytes or decompressor.unconsumed_tail:
            raise _too_large(max_bytes, "the decompressed body")
        if not decompressor.eof:
            raise ProblemError(400, "Malformed gzip body", "the gzip stream is truncated", field="body")
        rest = decompressor.unused_data
    return inflated

"""Reading a request body safely: content type, size cap while streaming, gzip, JSON."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request
from synergy_common.http import ProblemError

JSON_TYPES = ("application/json",)


def _is_json_content_type(content_type: str, also_text_plain: bool) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in JSON_TYPES or (media_type.startswith("application/") and media_type.endswith("+json")):
        return True
    return also_text_plain and media_type == "text/plain"


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, "Payload too large", f"the body may be at most {limit} bytes", field="body")


async def read_json_body(request: Request, max_bytes: int, also_text_plain: bool = False) -> Any:
    content_type = request.headers.get("content-type", "")
    if not _is_json_content_type(content_type, also_text_plain):
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
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        body = _gunzip(body, max_bytes)
    elif encoding not in ("identity", ""):
        raise ProblemError(
            415, "Unsupported content encoding", f"{encoding!r} is not supported", field="Content-Encoding"
        )
    if not body:
        raise ProblemError(400, "Empty body", "the body must be a JSON object", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, "Malformed JSON", str(exc), field="body") from exc


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        inflated = decompressor.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise ProblemError(400, "Malformed gzip body", str(exc), field="body") from exc
    if len(inflated) > max_bytes or decompressor.unconsumed_tail:
        raise _too_large(max_bytes)
    return inflated

"""HTTP pieces every FastAPI service shares: problem+json errors, brand-key auth, ops endpoints."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from synergy_common.brands import brand_id_for_write_key

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """Raise from a handler to answer a problem+json body (RFC 9457)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if field:
        body["field"] = field
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


def field_path(location: tuple[Any, ...] | list[Any]) -> str:
    """Pydantic's error location as a dotted path: ("body", "batch", 3, "name") -> "batch[3].name"."""
    path = ""
    for part in location:
        if part in ("body", "query", "path", "header"):
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, exc.field, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": field_path(error.get("loc", ())), "message": error.get("msg", "invalid")}
            for error in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        return problem_response(
            422, "Validation failed", f"{first['field']}: {first['message']}", first["field"], errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


class WriteKeyAuthenticator:
    """Resolves a brand write key to its brand through Postgres, caching answers briefly."""

    def __init__(self, pool: asyncpg.Pool, ttl_seconds: float = 60.0, negative_ttl_seconds: float = 5.0):
        self._pool = pool
        self._ttl = ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def brand_for(self, write_key: str) -> str | None:
        now = time.monotonic()
        cached = self._cache.get(write_key)
        if cached and cached[0] > now:
            return cached[1]
        brand_id = await brand_id_for_write_key(self._pool, write_key)
        ttl = self._ttl if brand_id else self._negative_ttl
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[write_key] = (now + ttl, brand_id)
        return brand_id


def write_key_from_headers(authorization: str | None) -> str | None:
    """`Bearer <key>`, or Basic auth with the key as the user name (Segment's convention)."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == "bearer" and credentials:
        return credentials
    if scheme == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, _ = decoded.partition(":")
        return user or None
    return None


async def authenticate_brand(
    authenticator: WriteKeyAuthenticator, authorization: str | None, body_write_key: str | None = None
) -> str:
    write_key = write_key_from_headers(authorization) or body_write_key
    if not write_key:
        raise ProblemError(
            401,
            "Missing write key",
            "send Authorization: Bearer <write key>",
            field="Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="synergy"'},
        )
    try:
        brand_id = await authenticator.brand_for(write_key)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ProblemError(503, "Key store unavailable", str(exc), headers={"Retry-After": "5"}) from exc
    if brand_id is None:
        raise ProblemError(
            401,
            "Unknown write key",
            "the write key is not valid",
            field="Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="synergy"'},
        )
    return brand_id


ReadinessCheck = Callable[[], Awaitable[bool]]


def ops_router(readiness_checks: Mapping[str, ReadinessCheck]) -> APIRouter:
    """GET /healthz (alive), /readyz (each named dependency answers), /metrics (Prometheus)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> Response:
        results: dict[str, bool] = {}
        for name, check in readiness_checks.items():
            try:
                results[name] = await check()
            except Exception:
                results[name] = False
        ready = all(results.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": results},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router

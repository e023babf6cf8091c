"""HTTP pieces every FastAPI service shares: problem+json errors, correlation ids, brand-key auth,
ops endpoints."""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from cachetools import LRUCache, TTLCache
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synergy_common.brands import WRITE_KEY_SHAPE, hash_write_key, write_key_status
from synergy_common.db import DATABASE_UNAVAILABLE


def _log() -> Any:
    # Looked up when used (errors only), so the logging configuration in force then applies.
    return structlog.get_logger(component="http")


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


CORRELATION_HEADER = "X-Correlation-ID"
MAX_CORRELATION_ID_LENGTH = 128
_correlation_id: ContextVar[str | None] = ContextVar("synergy_correlation_id", default=None)


def correlation_id_from(given: str | None) -> str:
    """The client's correlation id when it is short and printable, else a new one."""
    given = (given or "").strip()
    if given and len(given) <= MAX_CORRELATION_ID_LENGTH and given.isprintable():
        return given
    return new_correlation_id()


def new_correlation_id() -> str:
    """A random UUID's text, as str(uuid.uuid4()) writes it, in 40% of the time (no UUID object)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def current_correlation_id() -> str:
    """The correlation id of the request being handled (RequestSafetyNet sets it)."""
    value = _correlation_id.get()
    if value is None:
        value = new_correlation_id()
        _correlation_id.set(value)
    return value


def service_unavailable(what: str, exc: BaseException, retry_after_seconds: int = 5) -> ProblemError:
    """A 503 that tells the caller to retry and which correlation id to quote; the exception text
    goes to the log only."""
    correlation_id = current_correlation_id()
    event = f"{what.lower().replace(' ', '_')}_unavailable"
    _log().warning(event, correlation_id=correlation_id, error=repr(exc))
    return ProblemError(
        503,
        f"{what} unavailable",
        f"{what} cannot be reached right now; retry later (correlation id {correlation_id})",
        headers={"Retry-After": str(retry_after_seconds)},
        correlation_id=correlation_id,
    )


def _unhandled_problem(exc: BaseException, correlation_id: str) -> JSONResponse:
    if isinstance(exc, DATABASE_UNAVAILABLE):  # connection-level failures: worth retrying
        return problem_response(
            503,
            "Service unavailable",
            f"a backing service cannot be reached right now; retry later (correlation id {correlation_id})",
            headers={"Retry-After": "5"},
            correlation_id=correlation_id,
        )
    return problem_response(
        500,
        "Internal error",
        f"the error was logged under correlation id {correlation_id}",
        correlation_id=correlation_id,
    )


UNMATCHED_ROUTE = "other"
_ANSWERS: dict[str, Counter] = {}


def answers_counter(name: str) -> Counter:
    """`name{route,status}`: a service's HTTP answers by route template and status code, for the
    RequestSafetyNet to count. One per name in this process, so a second app reuses it."""
    if name not in _ANSWERS:
        _ANSWERS[name] = Counter(name, "HTTP answers by route template and status", ["route", "status"])
    return _ANSWERS[name]


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/v1/users/{user_id}/loyalty`), never the raw path, so
    the label stays bounded; `other` when no route matched."""
    return str(getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE)


class RequestSafetyNet:
    """Gives each request a correlation id (the client's X-Correlation-ID, or a new one; echoed in the
    answer) and answers any unhandled exception with a problem+json that carries no exception text.
    The exception, with its traceback, goes to the log under that correlation id. Counts every answer,
    5xx included, in `answers` by route template and status."""

    def __init__(self, app: ASGIApp, answers: Counter) -> None:
        self.app = app
        self.answers = answers
        # prometheus-client locks and builds a tuple on every labels() call; routes and statuses are few
        self._children: dict[tuple[str, int], Any] = {}

    def _count(self, scope: Scope, status: int) -> None:
        key = (route_template(scope), status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.answers.labels(key[0], str(status))
        child.inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        given = next((v.decode("latin-1") for k, v in headers if k == b"x-correlation-id"), None)
        correlation_id = correlation_id_from(given)
        token = _correlation_id.set(correlation_id)
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-correlation-id" for name, _ in headers):
                    headers.append((b"x-correlation-id", correlation_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            _log().error(
                "unhandled_error",
                correlation_id=correlation_id,
                method=scope.get("method"),
                path=scope.get("path"),
                exc_info=exc,
            )
            if status is not None:
                raise
            await _unhandled_problem(exc, correlation_id)(scope, receive, send_with_id)
        finally:
            _correlation_id.reset(token)
            if status is not None:  # else the client got no answer to count (it went away, say)
                self._count(scope, status)


def install_problem_handlers(app: FastAPI, answers: Counter) -> None:
    """problem+json for every error, and the RequestSafetyNet (correlation ids, no internals, every
    answer counted in `answers`, see answers_counter)."""
    app.add_middleware(RequestSafetyNet, answers=answers)

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


class AuthFailure(enum.StrEnum):
    """Why a request was not authenticated: the `reason` label of `synergy_<service>_auth_failures_total`."""

    MISSING_KEY = "missing_key"
    MALFORMED_KEY = "malformed_key"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    INACTIVE_BRAND = "inactive_brand"
    LOOKUP_THROTTLED = "lookup_throttled"
    KEY_STORE_UNAVAILABLE = "key_store_unavailable"


_AUTH_FAILURES: dict[str, Counter] = {}
_KEY_LOOKUPS: dict[str, Counter] = {}


def auth_failures_counter(service: str) -> Counter:
    """`synergy_<service>_auth_failures_total{reason}`, one per service name in this process."""
    if service not in _AUTH_FAILURES:
        _AUTH_FAILURES[service] = Counter(
            f"synergy_{service}_auth_failures_total", "Requests refused authentication, by reason", ["reason"]
        )
    return _AUTH_FAILURES[service]


def key_lookups_counter(service: str) -> Counter:
    if service not in _KEY_LOOKUPS:
        _KEY_LOOKUPS[service] = Counter(
            f"synergy_{service}_write_key_lookups_total",
            "Write keys looked up in Postgres (not answered from the cache), by result",
            ["result"],
        )
    return _KEY_LOOKUPS[service]


class KeyLookupThrottled(Exception):
    """Too many never-seen keys were looked up lately; this one was not checked."""


class KeyStoreUnavailable(Exception):
    """Postgres could not be asked about the key."""


@dataclass(frozen=True)
class KeyCheck:
    brand_id: str | None
    failure: AuthFailure | None = None


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up. Pure: the clock is injected."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._updated = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class WriteKeyAuthenticator:
    """Resolves a brand write key to its brand through Postgres, behind bounded caches.

    - Valid keys: an LRU of at most `max_keys` entries, each trusted for `ttl_seconds`, so a revoked
      key (or a deactivated brand) is refused within that time on every replica.
    - Unknown, revoked and inactive keys: a separate LRU of at most `max_unknown_keys` entries for
      `negative_ttl_seconds`. A flood of random keys fills this one, never the valid keys' cache.
    - Postgres is asked about a never-seen key only while the `unknown_lookups_per_second` budget
      allows; past it the key is answered 503 unchecked. Keys that were valid before, and are due
      for a re-check, never wait on that budget. Concurrent checks of one key share one query.
    - While Postgres cannot be reached, a key confirmed valid within `stale_if_error_seconds` is still
      accepted (keys are revoked through Postgres, so none can be revoked meanwhile), so events keep
      flowing through a database outage; never-seen keys get 503.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        service: str,
        *,
        ttl_seconds: float = 5.0,
        negative_ttl_seconds: float = 10.0,
        max_keys: int = 50_000,
        max_unknown_keys: int = 10_000,
        unknown_lookups_per_second: float = 50.0,
        unknown_lookup_burst: int = 100,
        stale_if_error_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._stale_if_error = stale_if_error_seconds
        self._ttl = ttl_seconds
        self._max_keys = max_keys
        self._valid: TTLCache[str, str] = TTLCache(max_keys, ttl_seconds, timer=clock)
        # The hot path: a key's hash -> its answer and when `_valid` forgets it. A dict lookup instead of
        # TTLCache's timer and a new KeyCheck (~3 us a request); never trusted longer than `_valid`.
        self._recent: dict[str, tuple[KeyCheck, float]] = {}
        # keys once found valid: brand and when Postgres last confirmed it
        self._once_valid: LRUCache[str, tuple[str, float]] = LRUCache(max_keys)
        self._refused: TTLCache[str, AuthFailure] = TTLCache(
            max_unknown_keys, negative_ttl_seconds, timer=clock
        )
        self._budget = TokenBucket(unknown_lookups_per_second, unknown_lookup_burst, clock)
        self._in_flight: dict[str, asyncio.Future[KeyCheck]] = {}
        self.service = service
        self.failures = auth_failures_counter(service)
        self._lookups = key_lookups_counter(service)

    async def check(self, write_key: str) -> KeyCheck:
        """The key's brand, or why it is refused. Raises KeyLookupThrottled, KeyStoreUnavailable."""
        if not WRITE_KEY_SHAPE.fullmatch(write_key):
            return KeyCheck(None, AuthFailure.MALFORMED_KEY)
        key_hash = hash_write_key(write_key)
        recent = self._recent.get(key_hash)
        if recent is not None:
            if self._clock() < recent[1]:
                return recent[0]
            del self._recent[key_hash]
        brand_id = self._valid.get(key_hash)
        if brand_id is not None:
            return KeyCheck(brand_id)
        refused = self._refused.get(key_hash)
        if refused is not None:
            return KeyCheck(None, refused)
        pending = self._in_flight.get(key_hash)
        if pending is None:
            if key_hash not in self._once_valid and not self._budget.take():
                raise KeyLookupThrottled()
            pending = asyncio.ensure_future(self._look_up(key_hash))
            self._in_flight[key_hash] = pending
            pending.add_done_callback(lambda _: self._in_flight.pop(key_hash, None))
        try:
            check = await asyncio.shield(pending)
        except KeyStoreUnavailable:
            known = self._once_valid.get(key_hash)
            if known is None or self._clock() - known[1] > self._stale_if_error:
                raise
            self._valid[key_hash] = known[0]  # asked again after the TTL, not on every request
            check = KeyCheck(known[0])
            self._remember(key_hash, check)
            return check
        confirmed = self._once_valid.get(key_hash)
        if check.brand_id is not None and confirmed is not None and confirmed[0] == check.brand_id:
            self._remember(key_hash, check, confirmed[1])
        return check

    def _remember(self, key_hash: str, check: KeyCheck, confirmed_at: float | None = None) -> None:
        """Trusted as long as `_valid` trusts the key: `ttl_seconds` from Postgres' confirmation."""
        if len(self._recent) >= self._max_keys:
            self._recent.clear()
        self._recent[key_hash] = (
            check,
            (self._clock() if confirmed_at is None else confirmed_at) + self._ttl,
        )

    async def brand_for(self, write_key: str) -> str | None:
        return (await self.check(write_key)).brand_id

    async def _look_up(self, key_hash: str) -> KeyCheck:
        try:
            status = await write_key_status(self._pool, key_hash)
        except DATABASE_UNAVAILABLE as exc:
            self._lookups.labels("error").inc()
            raise KeyStoreUnavailable() from exc
        if status is None:
            check = KeyCheck(None, AuthFailure.UNKNOWN_KEY)
        elif status.revoked:
            check = KeyCheck(None, AuthFailure.REVOKED_KEY)
        elif not status.brand_active:
            check = KeyCheck(None, AuthFailure.INACTIVE_BRAND)
        else:
            check = KeyCheck(status.brand_id)
        self._lookups.labels("valid" if check.failure is None else check.failure.value).inc()
        if check.brand_id is not None:
            self._valid[key_hash] = check.brand_id
            self._once_valid[key_hash] = (check.brand_id, self._clock())
        else:
            assert check.failure is not None
            self._refused[key_hash] = check.failure
            self._once_valid.pop(key_hash, None)
            self._recent.pop(key_hash, None)
        return check


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


_UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="synergy"'}


async def authenticate_brand(
    authenticator: WriteKeyAuthenticator, authorization: str | None, body_write_key: str | None = None
) -> str:
    """The brand the request's write key acts for; a problem+json ProblemError otherwise."""
    write_key = write_key_from_headers(authorization) or body_write_key
    if not write_key:
        authenticator.failures.labels(AuthFailure.MISSING_KEY.value).inc()
        raise ProblemError(
            401,
            "Missing write key",
            "send Authorization: Bearer <write key>",
            field="Authorization",
            headers=_UNAUTHENTICATED,
        )
    try:
        check = await authenticator.check(write_key)
    except KeyLookupThrottled as exc:
        authenticator.failures.labels(AuthFailure.LOOKUP_THROTTLED.value).inc()
        raise ProblemError(
            503,
            "Write key not checked",
            "too many unknown write keys were presented lately; retry in a second",
            headers={"Retry-After": "1"},
        ) from exc
    except KeyStoreUnavailable as exc:
        authenticator.failures.labels(AuthFailure.KEY_STORE_UNAVAILABLE.value).inc()
        raise service_unavailable("Key store", exc.__cause__ or exc) from exc
    if check.brand_id is None:
        assert check.failure is not None
        authenticator.failures.labels(check.failure.value).inc()
        # Unknown, revoked and deactivated keys are answered alike: the caller can only get a new key.
        raise ProblemError(
            401,
            "Unknown write key",
            "the write key is not valid",
            field="Authorization",
            headers=_UNAUTHENTICATED,
        )
    return check.brand_id


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

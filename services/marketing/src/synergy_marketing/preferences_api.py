"""Email preferences, one-click unsubscribe, preference-centre pages, open/click tracking and
recommendations: the routes `app.py` includes (issue 10).

- The API (`/v1/...`) takes the brand key and answers problem+json on errors.
- The pages (`/preferences`, `/unsubscribe`) take a signed token (synergy_marketing.tokens) instead of a
  login, answer HTML with a strict Content-Security-Policy, and a plain HTML page on errors.
- A GET never changes anything (mail scanners follow every GET in a mail).
- `POST /unsubscribe` is RFC 8058's one click: form-encoded or multipart, no cookie, 200, never a redirect.
- The tracking routes never answer 5xx to junk; the click route redirects only to a URL the message carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlsplit

import asyncpg
import orjson
import structlog
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import escape
from pydantic import ConfigDict, StringConstraints, ValidationError
from synergy_common.http import ProblemError, authenticate_brand
from synergy_schemas.fields import Email, Flag, Key, StrictModel, Timestamp

from synergy_marketing import preference_metrics as pm
from synergy_marketing.context import MarketingContext, marketing_context
from synergy_marketing.email_preferences import (
    MASTER_SWITCH,
    TOPIC_CHECKBOXES,
    UNSUBSCRIBE_ALL,
    AppliedChange,
    ChangeSource,
    EmailPreferences,
    as_api_body,
    change_from_form,
)
from synergy_marketing.hot_routes import HotEndpoint
from synergy_marketing.preferences_store import (
    PreferenceChangeRelay,
    PreferenceWriter,
    read_preferences,
    user_known,
)
from synergy_marketing.queue_store import mark_engagement, sent_item_carries_url
from synergy_marketing.recommendations import CategoryProduct, ViewedCategory, rank_products, top_category
from synergy_marketing.subscription_consumer import run_subscription_consumer
from synergy_marketing.tokens import (
    LIST_UNSUBSCRIBE_POST,
    MAX_TOKEN_CHARS,
    Purpose,
    TokenClaims,
    TokenRejected,
    TokenSecretMissing,
    TokenSigner,
    signer_from_settings,
)
from synergy_marketing.tracking import PIXEL_GIF, plausible_queue_id, redirect_target_acceptable

logger = structlog.get_logger("marketing.preferences")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_JSON_BODY_BYTES = 64 * 1024
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
TRACKING_TIMEOUT_SECONDS = 1.0
_TEMPLATES = Environment(
    loader=PackageLoader("synergy_marketing", "templates"),
    autoescape=select_autoescape(["html"]),
    enable_async=False,
    auto_reload=False,
)
_STYLESHEET = (PackageLoader("synergy_marketing", "templates").get_source(_TEMPLATES, "preferences.css"))[0]
UNKNOWN_USER = ProblemError(404, "Unknown user", "this brand has no such user", field="user_id")


@dataclass
class PreferencesRuntime:
    signer: TokenSigner | None
    relay: PreferenceChangeRelay
    writer: PreferenceWriter


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: MarketingContext = app.state.marketing
    try:
        signer: TokenSigner | None = signer_from_settings(context.settings)
    except TokenSecretMissing as exc:
        logger.warning("no_token_secret", detail=str(exc))
        signer = None
    relay = PreferenceChangeRelay(context.pool, context.publisher)
    writer = PreferenceWriter(context.pool)
    app.state.preferences = PreferencesRuntime(signer, relay, writer)
    tasks = [
        asyncio.create_task(relay.run_forever(), name="marketing-preference-relay"),
        asyncio.create_task(writer.run_forever(), name="marketing-preference-writer"),
    ]
    if context.settings.marketing_run_consumer:
        tasks.append(
            asyncio.create_task(
                run_subscription_consumer(
                    context.pool,
                    context.settings,
                    relay,
                    insights_topic=getattr(app.state, "insights_topic", None),
                ),
                name="marketing-subscription-consumer",
            )
        )
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


router = APIRouter(lifespan=_lifespan)


def _context(request: Request) -> MarketingContext:
    """The service's context (a plain call: FastAPI would run the sync dependency in a thread)."""
    return marketing_context(request)


def _runtime(request: Request) -> PreferencesRuntime:
    runtime: PreferencesRuntime | None = getattr(request.app.state, "preferences", None)
    if runtime is None:
        raise ProblemError(503, "Starting", "the service is still starting", headers={"Retry-After": "1"})
    return runtime


class EmailPreferencesUpdate(StrictModel):
    """A partial change: only the fields named are changed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 0})

    email: Email | None = None
    marketing_emails: Flag | None = None
    abandoned_cart_emails: Flag | None = None
    browse_abandonment_emails: Flag | None = None
    price_drop_alerts: Flag | None = None
    back_in_stock_alerts: Flag | None = None
    product_recommendations: Flag | None = None
    newsletter: Flag | None = None
    promotional_emails: Flag | None = None
    unsubscribed: Flag | None = None
    # Read-only fields of seed 004's row and of the GET answer, accepted so that the seed's example and a
    # GET's answer can be PUT back as they are; they change nothing (user_id must be the path's).
    user_id: Key | None = None
    unsubscribe_token: Annotated[str, StringConstraints(max_length=MAX_TOKEN_CHARS)] | None = None
    unsubscribe_url: Annotated[str, StringConstraints(max_length=MAX_TOKEN_CHARS + 200)] | None = None
    preferences_url: Annotated[str, StringConstraints(max_length=MAX_TOKEN_CHARS + 200)] | None = None
    unsubscribed_at: Timestamp | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


# --- helpers -----------------------------------------------------------------------------------


def _page(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _TEMPLATES.get_template(template).render(**values)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


@functools.cache
def _page_around(template: str, name: str) -> list[str]:
    """The template rendered once with `name` as a marker, cut where the value goes: a page that differs
    per request in that one value alone is then joined around its escaped value, not rendered again."""
    return _TEMPLATES.get_template(template).render(**{name: _MARKER}).split(_MARKER)


_MARKER = "\x00value\x00"


def _page_with(template: str, name: str, value: str) -> HTMLResponse:
    html = str(escape(value)).join(_page_around(template, name))
    return HTMLResponse(html, headers=PAGE_HEADERS)


def error_page(status: int, title: str, detail: str) -> HTMLResponse:
    return _page("error.html", status, title=title, detail=detail)


_TOKEN_ERROR_STATUS = {"malformed": 400, "bad_signature": 403, "wrong_purpose": 403, "expired": 410}


class PageError(Exception):
    def __init__(self, response: HTMLResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def _verify_token(runtime: PreferencesRuntime, token: str | None, accept: tuple[Purpose, ...]) -> TokenClaims:
    if runtime.signer is None:
        raise PageError(error_page(503, "Temporarily unavailable", "Please try again later."))
    try:
        claims = runtime.signer.verify(token, accept)
    except TokenRejected as rejected:
        pm.TOKENS_REJECTED.labels(rejected.reason).inc()
        detail = (
            "This link has expired. Use the link in a more recent email."
            if rejected.reason == "expired"
            else "This link is not valid. Nothing was changed."
        )
        raise PageError(error_page(_TOKEN_ERROR_STATUS[rejected.reason], "Link not valid", detail)) from None
    if not claims.brand_id.isdigit() or len(claims.brand_id) > 18:
        pm.TOKENS_REJECTED.labels("malformed").inc()
        raise PageError(error_page(400, "Link not valid", "This link is not valid. Nothing was changed."))
    return claims


def _database_page_error(exc: BaseException) -> PageError:
    logger.warning("preferences_database_unavailable", error=repr(exc))
    return PageError(error_page(503, "Temporarily unavailable", "Nothing was changed. Please try again."))


async def _body_within(request: Request, limit: int) -> bytes | None:
    """The raw body, or None as soon as it grows past `limit` (whatever Content-Length said)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _read_body_within(request: Request, limit: int) -> bytes:
    body = await _body_within(request, limit)
    if body is None:
        raise PageError(error_page(413, "Too large", "The form is too large."))
    return body


async def _read_form(request: Request, limit: int) -> list[tuple[str, str]]:
    """The fields of a form-encoded or multipart body (files are refused), as (name, value) pairs."""
    media_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media_type not in FORM_MEDIA_TYPES:
        raise PageError(
            error_page(415, "Unsupported form", "Send the form as application/x-www-form-urlencoded.")
        )
    body = await _read_body_within(request, limit)
    if media_type == "application/x-www-form-urlencoded":
        try:
            return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
        except (UnicodeDecodeError, ValueError):
            raise PageError(error_page(400, "Bad form", "The form could not be read.")) from None
    received = False

    async def replay_body() -> dict[str, Any]:  # the body already read, for starlette's multipart parser
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay_body).form(max_files=0, max_fields=64, max_part_size=limit)
    except Exception:  # python-multipart raises several kinds for broken bodies
        raise PageError(error_page(400, "Bad form", "The form could not be read.")) from None
    fields = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
    await form.close()
    return fields


def _same_origin(request: Request) -> bool:
    """A browser's form post from another site is refused (Fetch metadata first, then Origin); a POST
    with neither header (a mail provider, a script) is let through: the signed token is the authority."""
    fetch_site = request.headers.get("sec-fetch-site", "").lower()
    if fetch_site:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc.lower() == (request.headers.get("host") or "").lower()


def _links(context: MarketingContext, signer: TokenSigner, brand_id: int, user_id: str) -> dict[str, str]:
    base = context.settings.marketing_public_url.rstrip("/")
    unsubscribe_token = signer.sign("unsubscribe", brand_id, user_id)
    preferences_token = signer.sign("preferences", brand_id, user_id)
    return {
        "unsubscribe_token": unsubscribe_token,
        "unsubscribe_url": f"{base}/unsubscribe?token={unsubscribe_token}",
        "preferences_url": f"{base}/preferences?token={preferences_token}",
    }


def _record_change(runtime: PreferencesRuntime, applied: AppliedChange, source: ChangeSource) -> None:
    if not applied.any:
        return
    pm.preference_changes(source).inc()
    if applied.changed.get("unsubscribed", (None, None))[1] is True:
        pm.unsubscribes(source).inc()
    runtime.relay.wake()


async def _brand_of(context: MarketingContext, authorization: str | None) -> int:
    """The brand of the key; a key store that is away is a 503 that names no internals."""
    try:
        return int(await authenticate_brand(context.authenticator, authorization))
    except ProblemError as problem:
        if problem.status != 503:
            raise
        raise ProblemError(503, "Key store unavailable", "try again", headers={"Retry-After": "5"}) from None


READ_ONLY_FIELDS = frozenset(
    {
        "user_id",
        "unsubscribe_token",
        "unsubscribe_url",
        "preferences_url",
        "unsubscribed_at",
        "created_at",
        "updated_at",
    }
)


def _parse_update(body: bytes, user_id: str) -> dict[str, Any]:
    if not body.strip():
        raise ProblemError(400, "Empty body", "send a JSON object of the fields to change", field="body")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, "Malformed JSON", str(exc), field="body") from None
    try:
        update = EmailPreferencesUpdate.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
            for error in exc.errors()
        ]
        first = errors[0]
        raise ProblemError(
            422, "Validation failed", f"{first['field']}: {first['message']}", first["field"], errors=errors
        ) from None
    if update.user_id is not None and update.user_id != user_id:
        raise ProblemError(422, "Validation failed", "user_id: is not the user of the path", "user_id")
    return {k: v for k, v in update.model_dump(exclude_none=True).items() if k not in READ_ONLY_FIELDS}


# --- API (brand key) ---------------------------------------------------------------------------

_API_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or unknown brand key"},
    404: {"description": "unknown user (a user of another brand is unknown here)"},
    503: {"description": "Postgres unavailable"},
}


async def _api_preferences_body(
    context: MarketingContext,
    runtime: PreferencesRuntime,
    brand_id: int,
    user_id: str,
    prefs: EmailPreferences,
) -> dict[str, Any]:
    body = as_api_body(prefs, user_id)
    if runtime.signer is None:
        raise ProblemError(503, "Token secret missing", "MARKETING_TOKEN_SECRET is not set")
    body.update(_links(context, runtime.signer, brand_id, user_id))
    return body


@router.get("/v1/users/{user_id}/email-preferences", responses=_API_RESPONSES, tags=["preferences"])
async def get_email_preferences(
    request: Request,
    user_id: str = Path(min_length=1, max_length=150),
    authorization: str | None = Header(default=None),
) -> JSONResponse:
    """Seed 004's EmailPreferences of the user (defaults when none are stored), with the user's
    `unsubscribe_url` and `preferences_url`."""
    context = _context(request)
    runtime = _runtime(request)
    brand_id = await _brand_of(context, authorization)
    try:
        async with context.pool.acquire(timeout=5) as connection:
            if not await user_known(connection, brand_id, user_id):
                raise UNKNOWN_USER
            prefs = await read_preferences(connection, brand_id, user_id)
    except DATABASE_ERRORS as exc:
        raise ProblemError(503, "Postgres unavailable", "try again", headers={"Retry-After": "5"}) from exc
    return JSONResponse(await _api_preferences_body(context, runtime, brand_id, user_id, prefs))


@router.put(
    "/v1/users/{user_id}/email-preferences",
    responses={
        **_API_RESPONSES,
        400: {"description": "malformed JSON"},
        413: {"description": "body too large"},
        422: {"description": "unknown field or wrong type"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmailPreferencesUpdate.model_json_schema()}},
        }
    },
    tags=["preferences"],
)
async def put_email_preferences(
    request: Request,
    user_id: str = Path(min_length=1, max_length=150),
    authorization: str | None = Header(default=None),
) -> JSONResponse:
    """Change only the fields the body names; each change is published as `email_preferences_changed`.
    A user the brand has not seen yet is created with the defaults first (sign-up opt-ins)."""
    context = _context(request)
    runtime = _runtime(request)
    brand_id = await _brand_of(context, authorization)
    body = await _body_within(request, MAX_JSON_BODY_BYTES)
    if body is None:
        raise ProblemError(
            413, "Body too large", f"the body is over {MAX_JSON_BODY_BYTES} bytes", field="body"
        )
    change = _parse_update(body, user_id)
    try:
        applied = await runtime.writer.change(brand_id, user_id, change, "api")
    except DATABASE_ERRORS as exc:
        raise ProblemError(
            503, "Postgres unavailable", "nothing was changed", headers={"Retry-After": "5"}
        ) from exc
    _record_change(runtime, applied, "api")
    return JSONResponse(await _api_preferences_body(context, runtime, brand_id, user_id, applied.after))


@router.get(
    "/v1/users/{user_id}/recommendations",
    responses=_API_RESPONSES,
    tags=["recommendations"],
)
async def get_recommendations(
    request: Request,
    user_id: str = Path(min_length=1, max_length=150),
    authorization: str | None = Header(default=None),
) -> JSONResponse:
    """Seed 004's recommendations: the popular products of the category the user viewed most."""
    context = _context(request)
    brand_id = await _brand_of(context, authorization)
    try:
        async with context.pool.acquire(timeout=5) as connection:
            if not await user_known(connection, brand_id, user_id):
                raise UNKNOWN_USER
            viewed = await connection.fetch(
                """SELECT product_category, sum(view_count)::bigint AS views, max(last_viewed_at) AS last
                   FROM product_views
                   WHERE brand_id = $1 AND person = $2 AND product_category IS NOT NULL
                   GROUP BY product_category""",
                brand_id,
                user_id,
            )
            category = top_category(
                ViewedCategory(row["product_category"], int(row["views"]), row["last"]) for row in viewed
            )
            rows = []
            if category is not None:
                rows = await connection.fetch(
                    """SELECT product_id, max(product_name) AS product_name,
                              max(product_price) AS product_price, max(image_url) AS image_url,
                              count(*) FILTER (WHERE purchased) AS purchases,
                              count(DISTINCT person) AS viewers, sum(view_count)::bigint AS views
                       FROM product_views WHERE brand_id = $1 AND product_category = $2
                       GROUP BY product_id
                       ORDER BY purchases DESC, viewers DESC, views DESC, product_id
                       LIMIT 50""",
                    brand_id,
                    category,
                )
    except DATABASE_ERRORS as exc:
        raise ProblemError(503, "Postgres unavailable", "try again", headers={"Retry-After": "5"}) from exc
    ranked = rank_products(
        CategoryProduct(
            row["product_id"],
            row["product_name"],
            row["product_price"],
            row["image_url"],
            int(row["purchases"]),
            int(row["viewers"]),
            int(row["views"]),
        )
        for row in rows
    )
    return JSONResponse(
        {
            "user_id": user_id,
            "category": category,
            "recommendations": [
                {
                    "product_id": product.product_id,
                    "product_name": product.product_name,
                    "product_price": _money(product.product_price),
                    "product_category": category,
                    "image_url": product.image_url,
                }
                for product in ranked
            ],
        }
    )


def _money(value: Decimal | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


# --- pages (signed token) ----------------------------------------------------------------------

_TOKEN_QUERY = Query(default=None, description="the signed token from the mail's link")


@router.get("/assets/preferences.css", include_in_schema=False)
async def stylesheet() -> Response:
    return Response(
        _STYLESHEET,
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/preferences", response_class=HTMLResponse, tags=["pages"])
async def preferences_page(
    request: Request,
    token: str | None = _TOKEN_QUERY,
    saved: str | None = Query(default=None, description="1 right after a save"),
) -> HTMLResponse:
    """The preference centre: seed 004's checkboxes, the master switch and unsubscribe-from-all."""
    context = _context(request)
    started = time.perf_counter()
    try:
        runtime = _runtime(request)
        claims = _verify_token(runtime, token, ("preferences",))
        assert runtime.signer is not None and token is not None
        try:
            async with context.pool.acquire(timeout=5) as connection:
                prefs = await read_preferences(connection, int(claims.brand_id), claims.user_id)
        except DATABASE_ERRORS as exc:
            raise _database_page_error(exc) from exc
        return _preferences_page(runtime.signer, token, prefs, saved == "1")
    except PageError as error:
        return error.response
    finally:
        pm.request_seconds("preferences_page").observe(time.perf_counter() - started)


def _preferences_page(signer: TokenSigner, token: str, prefs: EmailPreferences, saved: bool) -> HTMLResponse:
    return _page(
        "preferences.html",
        token=token,
        nonce=signer.form_nonce(token),
        preferences=prefs,
        saved=saved,
        topics=TOPIC_CHECKBOXES,
        master_switch=MASTER_SWITCH,
        unsubscribe_all=UNSUBSCRIBE_ALL,
    )


@router.post(
    "/preferences",
    response_class=HTMLResponse,
    responses={303: {"description": "saved: back to the page, which shows what was saved"}},
    tags=["pages"],
)
async def save_preferences(
    request: Request,
    token: str | None = _TOKEN_QUERY,
) -> Response:
    """The preference centre's form: every box (ticked or not), with the nonce of the page it came from."""
    context = _context(request)
    started = time.perf_counter()
    try:
        runtime = _runtime(request)
        claims = _verify_token(runtime, token, ("preferences",))
        assert runtime.signer is not None and token is not None
        if not _same_origin(request):
            return error_page(
                403, "Not allowed", "This form was sent from another site. Nothing was changed."
            )
        fields = await _read_form(request, context.settings.marketing_max_form_bytes)
        nonce = next((value for name, value in fields if name == "nonce"), None)
        if not runtime.signer.verify_form_nonce(token, nonce):
            return error_page(
                403,
                "Form expired",
                "This form has expired. Reload the page and try again. Nothing was changed.",
            )
        change = change_from_form(name for name, value in fields if value)
        try:
            applied = await runtime.writer.change(
                int(claims.brand_id), claims.user_id, change, "preference_centre"
            )
        except DATABASE_ERRORS as exc:
            raise _database_page_error(exc) from exc
        _record_change(runtime, applied, "preference_centre")
        return Response(
            status_code=303,
            headers={**PAGE_HEADERS, "Location": f"/preferences?token={quote(token, safe='')}&saved=1"},
        )
    except PageError as error:
        return error.response
    finally:
        pm.request_seconds("preferences_save").observe(time.perf_counter() - started)


def _preferences_link(context: MarketingContext, signer: TokenSigner, claims: TokenClaims) -> str:
    preferences_token = signer.sign("preferences", claims.brand_id, claims.user_id)
    return f"/preferences?token={preferences_token}"


@router.get("/unsubscribe", response_class=HTMLResponse, tags=["pages"])
async def unsubscribe_confirmation(
    request: Request,
    token: str | None = _TOKEN_QUERY,
) -> HTMLResponse:
    """A confirmation page with a form that POSTs; it changes nothing (mail scanners follow GETs)."""
    context = _context(request)
    started = time.perf_counter()
    try:
        runtime = _runtime(request)
        claims = _verify_token(runtime, token, ("unsubscribe", "preferences"))
        assert runtime.signer is not None
        try:
            async with context.pool.acquire(timeout=5) as connection:
                prefs = await read_preferences(connection, int(claims.brand_id), claims.user_id)
        except DATABASE_ERRORS as exc:
            raise _database_page_error(exc) from exc
        return _page(
            "unsubscribe_confirm.html",
            token=token,
            email=prefs.email,
            already=prefs.unsubscribed,
            preferences_link=_preferences_link(context, runtime.signer, claims),
        )
    except PageError as error:
        return error.response
    finally:
        pm.request_seconds("unsubscribe_page").observe(time.perf_counter() - started)


@router.post(
    "/unsubscribe",
    response_class=HTMLResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media_type: {
                    "schema": {
                        "type": "object",
                        "properties": {"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}},
                        "required": ["List-Unsubscribe"],
                    }
                }
                for media_type in FORM_MEDIA_TYPES
            },
        }
    },
    tags=["pages"],
)
async def one_click_unsubscribe(
    request: Request,
    token: str | None = _TOKEN_QUERY,
) -> HTMLResponse:
    """RFC 8058: the body `List-Unsubscribe=One-Click`, form-encoded or multipart; no cookie, no login.
    Answers 200 with a short page, never a redirect."""
    context = _context(request)
    started = time.perf_counter()
    try:
        runtime = _runtime(request)
        claims = _verify_token(runtime, token, ("unsubscribe", "preferences"))
        assert runtime.signer is not None
        fields = await _read_form(request, context.settings.marketing_max_form_bytes)
        name, _, value = LIST_UNSUBSCRIBE_POST.partition("=")
        if (name, value) not in fields:
            return error_page(
                400,
                "Not unsubscribed",
                f"The request must carry {LIST_UNSUBSCRIBE_POST}. Nothing was changed.",
            )
        try:
            applied = await runtime.writer.change(
                int(claims.brand_id), claims.user_id, {"unsubscribed": True}, "one_click"
            )
        except DATABASE_ERRORS as exc:
            raise _database_page_error(exc) from exc
        _record_change(runtime, applied, "one_click")
        return _page_with(
            "unsubscribed.html", "preferences_link", _preferences_link(context, runtime.signer, claims)
        )
    except PageError as error:
        return error.response
    finally:
        pm.request_seconds("one_click").observe(time.perf_counter() - started)


# --- tracking (no key: the queue id is the link's) ---------------------------------------------


def _pixel() -> Response:
    return Response(
        PIXEL_GIF,
        media_type="image/gif",
        headers={"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache"},
    )


@router.get(
    "/track/email-open",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "a 1x1 transparent GIF, always"}},
    tags=["tracking"],
)
async def track_email_open(
    request: Request,
    queue_id: str | None = Query(default=None, description="the queue item of the mail"),
) -> Response:
    """Records the first open of a sent mail and answers a 1x1 GIF, whatever the queue id."""
    started = time.perf_counter()
    outcome = "ignored"
    try:
        context: MarketingContext | None = getattr(request.app.state, "marketing", None)
        if context is not None and plausible_queue_id(queue_id):
            async with asyncio.timeout(TRACKING_TIMEOUT_SECONDS):
                marked = await mark_engagement(
                    context.pool, None, "opened", datetime.now(UTC), queue_id=queue_id
                )
            outcome = "unknown" if marked is None else "first" if marked["first"] else "repeat"
    except (*DATABASE_ERRORS, ValueError) as exc:
        outcome = "error"
        logger.warning("open_not_recorded", queue_id=(queue_id or "")[:64], error=repr(exc))
    finally:
        pm.tracking_requests("open", outcome).inc()
        pm.request_seconds("track_open").observe(time.perf_counter() - started)
    return _pixel()


@router.get(
    "/track/email-click",
    response_class=HTMLResponse,
    responses={
        302: {"description": "to the URL, which the queue item's message carried"},
        400: {"description": "a target the message did not carry: refused (no open redirect)"},
        404: {"description": "no sent mail with this queue id"},
    },
    tags=["tracking"],
)
async def track_email_click(
    request: Request,
    queue_id: str | None = Query(default=None, description="the queue item of the mail"),
    redirect: str | None = Query(default=None, description="a URL the mail carried"),
) -> Response:
    """Records the first click of a sent mail and redirects, only to a URL its message carried."""
    started = time.perf_counter()
    outcome = "refused"
    try:
        context: MarketingContext | None = getattr(request.app.state, "marketing", None)
        if context is None:
            outcome = "starting"
            return error_page(503, "Temporarily unavailable", "Please try again in a moment.")
        if not plausible_queue_id(queue_id) or not redirect_target_acceptable(redirect):
            return error_page(400, "Link not valid", "This link cannot be followed.")
        assert queue_id is not None and redirect is not None
        try:
            async with asyncio.timeout(TRACKING_TIMEOUT_SECONDS * 2):
                carried = await sent_item_carries_url(context.pool, queue_id, redirect)
                marked = (
                    await mark_engagement(context.pool, None, "clicked", datetime.now(UTC), queue_id=queue_id)
                    if carried
                    else None
                )
        except DATABASE_ERRORS as exc:
            outcome = "error"
            logger.warning("click_not_recorded", queue_id=queue_id, error=repr(exc))
            return error_page(503, "Temporarily unavailable", "Please try again in a moment.")
        if not carried or marked is None:
            return error_page(404, "Link not valid", "This link cannot be followed.")
        outcome = "redirected"
        return Response(status_code=302, headers={"Location": redirect, "Cache-Control": "no-store"})
    finally:
        pm.tracking_requests("click", outcome).inc()
        pm.request_seconds("track_click").observe(time.perf_counter() - started)


# Served by synergy_marketing.hot_routes without FastAPI's routing (the routes above stay their definition).
HOT_ENDPOINTS: dict[str, HotEndpoint] = {
    "one_click_unsubscribe": lambda request, query: one_click_unsubscribe(request, query.get("token")),
    "track_email_open": lambda request, query: track_email_open(request, query.get("queue_id")),
    "track_email_click": lambda request, query: track_email_click(
        request, query.get("queue_id"), query.get("redirect")
    ),
}

"""The hot routes (the one-click POST, the open pixel, the click redirect) served without FastAPI's
routing and dependency machinery: an ASGI middleware that calls the same endpoint functions the routes
declare, with their query parameters read straight from the query string.

It sits inside the RequestSafetyNet, so these answers keep their correlation id, are counted under their
route template, and an unhandled error is still a clean 500. The FastAPI routes stay declared (OpenAPI,
and any method or path this table does not name goes to FastAPI as before).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from synergy_common.http import ProblemError, problem_response

# The endpoint, given the request and its query parameters (the last value of each name, as FastAPI).
HotEndpoint = Callable[[Request, Mapping[str, str]], Awaitable[Response]]


class HotRoutes:
    def __init__(
        self, app: ASGIApp, routes: Iterable[APIRoute], endpoints: Mapping[str, HotEndpoint]
    ) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], tuple[APIRoute, HotEndpoint]] = {}
        for route in routes:
            for method in (route.methods or set()) - {"HEAD"}:
                if route.name in endpoints:
                    self._routes[(method, route.path)] = (route, endpoints[route.name])
        missing = set(endpoints) - {route.name for route, _ in self._routes.values()}
        if missing:
            raise ValueError(f"no route for the hot endpoints {sorted(missing)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            hot = self._routes.get((scope["method"], scope["path"]))
            if hot is not None:
                route, endpoint = hot
                scope["route"] = route  # the template the RequestSafetyNet counts the answer under
                request = Request(scope, receive)
                response: Any
                try:
                    response = await endpoint(request, request.query_params)
                except ProblemError as problem:
                    response = problem_response(
                        problem.status,
                        problem.title,
                        problem.detail,
                        problem.field,
                        problem.headers,
                        **problem.extra,
                    )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

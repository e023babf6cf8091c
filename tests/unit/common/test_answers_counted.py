"""The RequestSafetyNet counts every answer under its route template and status: a bounded label set
whatever paths clients send, 404s of unknown paths as `other`, and the 500 it answers itself."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter
from synergy_common.http import ProblemError, install_problem_handlers


def loyalty_app(answers: Counter) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, answers)

    @app.get("/v1/users/{user_id}/loyalty")
    async def loyalty(user_id: str) -> dict[str, str]:
        if user_id == "nobody":
            raise ProblemError(404, "Unknown user")
        return {"user_id": user_id}

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    return app


def counted(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "synergy_test_requests_total"
    }


async def test_answers_are_counted_by_route_template_and_status() -> None:
    registry = CollectorRegistry()
    answers = Counter("synergy_test_requests_total", "answers", ["route", "status"], registry=registry)
    transport = httpx.ASGITransport(app=loyalty_app(answers), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        statuses = [
            (await client.get("/v1/users/u-1/loyalty")).status_code,
            (await client.get("/v1/users/u-2/loyalty")).status_code,
            (await client.get("/v1/users/nobody/loyalty")).status_code,
            (await client.get("/no/such/path/7")).status_code,
            (await client.post("/v1/users/u-1/loyalty")).status_code,
            (await client.get("/v1/boom")).status_code,
        ]
    assert statuses == [200, 200, 404, 404, 405, 500]
    assert counted(registry) == {
        ("/v1/users/{user_id}/loyalty", "200"): 2.0,
        ("/v1/users/{user_id}/loyalty", "404"): 1.0,
        ("other", "404"): 1.0,
        ("/v1/users/{user_id}/loyalty", "405"): 1.0,
        ("/v1/boom", "500"): 1.0,
    }

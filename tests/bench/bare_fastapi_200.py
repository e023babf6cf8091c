"""The one-click ceiling: a FastAPI handler that reads the form body and answers 200, nothing else."""

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

app = FastAPI()


@app.post("/unsubscribe")
async def unsubscribe(request: Request) -> HTMLResponse:
    await request.body()
    return HTMLResponse("<!doctype html><p>You are unsubscribed</p>")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}

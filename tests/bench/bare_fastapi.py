"""The single-event ceiling: a FastAPI handler that answers 202 and does nothing else."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # as ingest


@app.post("/v1/events")
async def accept(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"event_id": "01HZX3N2Q8W5Y7K9M1P3R5T7V9"}, status_code=202)

"""The single-event ceiling: FastAPI handlers that read the body, answer as ingest does, and do nothing else.

`python -m tests.bench.bare_fastapi PORT [WORKERS]` serves it exactly as ingest serves itself
(synergy_ingest.app.serve): the same uvicorn configuration (uvloop, httptools, no access log), the
same garbage-collector tuning, and with WORKERS > 1 as many processes on one SO_REUSEPORT port.
"""

import multiprocessing
import signal
import socket
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_ingest.app import KEEP_ALIVE_SECONDS

app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # as ingest


@app.post("/v1/events")
async def accept(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"event_id": "01HZX3N2Q8W5Y7K9M1P3R5T7V9"}, status_code=202)


@app.post("/v1/track")
async def track(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"success": True, "event_id": "01HZX3N2Q8W5Y7K9M1P3R5T7V9"}, status_code=200)


def serve(port: int, shared: bool) -> None:
    sock = None
    if shared:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(2048)
    tune_garbage_collector()
    config = uvicorn.Config(
        app,
        host="0.0.0.0",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


def main() -> None:
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    if workers <= 1:
        serve(port, shared=False)
        return
    processes = [
        multiprocessing.get_context("spawn").Process(target=serve, args=(port, True), daemon=True)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()

    def stop(signum: int, _frame: object) -> None:
        for process in processes:
            process.terminate()

    signal.signal(signal.SIGTERM, stop)
    for process in processes:
        process.join()


if __name__ == "__main__":
    main()

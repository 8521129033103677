"""Ingest throughput: events/s through /v1/batch (100 realistic messages a request), until every
event is on the bus, against the ceiling of the same framework: a FastAPI app that only parses
the same JSON and answers 200. Both are driven in-process through the same ASGI client, so the
ratio is what ingest's own work costs."""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request, Response

from bench.retail import messages

REQUESTS = 200
BATCH = 100
CONCURRENCY = 8  # requests in flight, as from several SDK clients
AUTH = ("dev-write-key", "")


def ceiling_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/batch")
    async def batch(request: Request) -> Response:
        body = orjson.loads(await request.body())
        return Response(orjson.dumps({"success": True, "accepted": len(body["batch"]), "rejected": []}),
                        media_type="application/json")

    return app


async def drive(app: Any, bodies: list[bytes]) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", auth=AUTH) as client:
        queue = list(reversed(bodies))

        async def sender() -> None:
            while queue:
                response = await client.post("/v1/batch", content=queue.pop(), headers={"content-type": "application/json"})
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started


async def until_published(app: Any, n: int) -> None:
    runtime = app.state.runtime
    while sum((await runtime.bus.lag("bench-probe", ["interactions.v1"])).values()) < n:
        await asyncio.sleep(0.01)


async def run() -> dict[str, float]:
    data = messages(REQUESTS * BATCH)
    bodies = [orjson.dumps({"batch": data[i:i + BATCH]}) for i in range(0, len(data), BATCH)]
    events = len(data)
    ceiling = events / await drive(ceiling_app(), bodies)

    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="fs-bench-")
    from services.ingest.app import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        started = time.perf_counter()
        await drive(app, bodies)
        requests_done = time.perf_counter()
        await until_published(app, events)
        sustained = events / (time.perf_counter() - started)
        ingest = events / (requests_done - started)
    return {"ingest_events_per_s": ingest, "ceiling_events_per_s": ceiling, "ratio": ingest / ceiling,
            "sustained_events_per_s": sustained}


def main() -> None:
    result = asyncio.run(run())
    print(f"ingest /v1/batch: {result['ingest_events_per_s']:,.0f} events/s; bare FastAPI ceiling "
          f"{result['ceiling_events_per_s']:,.0f} events/s; ratio {result['ratio']:.2f} (target >= 0.5); "
          f"sustained until all on the bus: {result['sustained_events_per_s']:,.0f} events/s")


if __name__ == "__main__":
    main()

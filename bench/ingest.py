"""Ingest throughput over real HTTP: events/s through /v1/batch (100 real retail messages a request,
8 requests in flight) against the ceiling of the same framework: a bare FastAPI app that only parses
the same JSON and answers 200. Both are served by uvicorn on loopback, each as its own process (as
`make run` serves ingest: `python -m services.ingest`, SQLite and the embedded bus in a fresh
DATA_DIR), and driven by the same client with the same batches in the same run, so the ratio is what
ingest's own work costs (the ceiling is measured before and after ingest, and averaged, as other
work on the machine comes and goes). Also printed: the rate until every event is on the bus (the pipeline
behind the requests).

`python -m bench.ingest` runs it; `PORT=... python -m bench.ingest ceiling` serves the bare app."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from fastapi import FastAPI, Request, Response

from bench.retail import messages
from shared.bus.embedded import EmbeddedBus
from tests.helpers import ROOT, free_port, stop_process, wait_until_healthy

REQUESTS = 300
BATCH = 100
CONCURRENCY = 8  # requests in flight, as from several SDK clients
TARGET_RATIO = 0.5  # issue 13: at least half the bare framework's rate
AUTH = ("dev-write-key", "")
PUBLISH_TIMEOUT_SECONDS = 300


def ceiling_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/batch")
    async def batch(request: Request) -> Response:
        body = orjson.loads(await request.body())
        return Response(orjson.dumps({"success": True, "accepted": len(body["batch"]), "rejected": []}),
                        media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def drive(url: str, bodies: list[bytes]) -> float:
    """Seconds to send every body, CONCURRENCY requests in flight on kept-alive connections."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, auth=AUTH, limits=limits, timeout=60) as client:
        queue = list(reversed(bodies))

        async def sender() -> None:
            while queue:
                response = await client.post("/v1/batch", content=queue.pop(), headers={"content-type": "application/json"})
                assert response.status_code == 200, response.text
                assert not response.json()["rejected"], response.text

        await asyncio.gather(*(client.get("/health") for _ in range(CONCURRENCY)))  # open the connections
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started


async def until_published(bus_path: Path, n: int) -> None:
    bus = EmbeddedBus(bus_path)
    await bus.start()
    deadline = time.monotonic() + PUBLISH_TIMEOUT_SECONDS
    try:
        while sum((await bus.lag("bench-probe", ["interactions.v1"])).values()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"not every event on the bus within {PUBLISH_TIMEOUT_SECONDS} s")
            await asyncio.sleep(0.02)
    finally:
        await bus.stop()


def serve(module: str, args: list[str], env: dict[str, str], log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m module args...` on a free port (PORT), once healthy."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text", **env, "PORT": str(port)}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", module, *args], env=full_env,
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process, log)
    return url, process


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ceiling_rate(bodies: list[bytes], work: Path) -> tuple[float, float]:
    """Events/s of the bare app, and its CPU ms per request."""
    url, process = serve("bench.ingest", ["ceiling"], {}, work / "ceiling.log")
    try:
        cpu = cpu_seconds(process.pid)
        rate = len(bodies) * BATCH / await drive(url, bodies)
        return rate, (cpu_seconds(process.pid) - cpu) * 1000 / len(bodies)
    finally:
        stop_process(process)


async def run() -> dict[str, float]:
    data = messages(REQUESTS * BATCH)
    bodies = [orjson.dumps({"batch": data[i:i + BATCH]}) for i in range(0, len(data), BATCH)]
    events = len(data)
    work = Path(tempfile.mkdtemp(prefix="fs-bench-ingest-"))

    ceilings = [await ceiling_rate(bodies, work)]
    data_dir = work / "data"
    data_dir.mkdir()
    url, process = serve("services.ingest", [], {"DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}, work / "ingest.log")
    try:
        cpu, started = cpu_seconds(process.pid), time.perf_counter()
        elapsed = await drive(url, bodies)
        cpu_requests = cpu_seconds(process.pid) - cpu
        await until_published(data_dir / "bus.db", events)
        sustained = events / (time.perf_counter() - started)
        cpu_all = cpu_seconds(process.pid) - cpu
    finally:
        stop_process(process)
    ceilings.append(await ceiling_rate(bodies, work))  # before and after: the machine's load drifts
    ceiling = sum(rate for rate, _ in ceilings) / len(ceilings)
    ingest = events / elapsed
    return {"ingest_events_per_s": ingest, "ceiling_events_per_s": ceiling, "ratio": ingest / ceiling,
            "sustained_events_per_s": sustained,
            "ceiling_cpu_ms": sum(ms for _, ms in ceilings) / len(ceilings),
            "requests_cpu_ms": cpu_requests * 1000 / len(bodies), "all_cpu_ms": cpu_all * 1000 / len(bodies)}


def main() -> None:
    result = asyncio.run(run())
    print(f"ingest /v1/batch over HTTP (uvicorn, loopback, {CONCURRENCY} in flight, {BATCH} a request): "
          f"{result['ingest_events_per_s']:,.0f} events/s; bare FastAPI ceiling "
          f"{result['ceiling_events_per_s']:,.0f} events/s; ratio {result['ratio']:.2f} "
          f"(target >= {TARGET_RATIO}: {'met' if result['ratio'] >= TARGET_RATIO else 'missed'}); "
          f"sustained until all on the bus: {result['sustained_events_per_s']:,.0f} events/s")
    print(f"   server CPU per request of {BATCH}: bare {result['ceiling_cpu_ms']:.1f} ms; ingest "
          f"{result['requests_cpu_ms']:.1f} ms while requests ran, {result['all_cpu_ms']:.1f} ms until all on the bus "
          "(the pipeline's dedupe, stitching, timeline and publishing)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["ceiling"]:
        import uvicorn

        uvicorn.run(ceiling_app(), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
    else:
        main()

"""The dashboard's pages over real HTTP (issue 14: each page's HTML under 100 ms server time on the
demo data), against a baseline of the same uvicorn serving a bare FastAPI HTML page.

The gateway runs as its own process (`python -m services.gateway`: SQLite stores and the embedded
bus in a fresh DATA_DIR, dev keys on loopback, so the page signs in as admin) and is loaded with a
demo shop of BENCH_DASHBOARD_CUSTOMERS customers (default 1,500) by `funnelstream import`, then
left until every service has applied it (bench/importing.py's wait: every consumer group's lag 0,
inboxes and outboxes empty). Each page is asked once to warm up, then REQUESTS times in turn on a
kept-alive connection; its time is the client's wall time on loopback (the server's time plus the
same small client cost the baseline pays). p50 and p95 per page; the ratio is the page's p50 over
the baseline's p50.

`python -m bench.dashboard` runs it; `PORT=... python -m bench.dashboard baseline` serves the bare page.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from bench.importing import Gateway, import_and_wait
from bench.ingest import serve
from services.demo import shop
from tests.helpers import stop_process

CUSTOMERS = int(os.environ.get("BENCH_DASHBOARD_CUSTOMERS", "1500"))
REQUESTS = 20
TARGET_MS = 100
COOKIE = {"funnelstream_key": "dev-admin-key"}
BARE_HTML = "<!doctype html><html><head><title>bare</title></head><body><h1>Hello</h1>" + "<p>row</p>" * 200 + "</body></html>"


def baseline_app() -> FastAPI:
    app = FastAPI()

    @app.get("/page")
    async def page() -> HTMLResponse:
        return HTMLResponse(BARE_HTML)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def timings(client: httpx.Client, path: str) -> list[float]:
    """Milliseconds of REQUESTS requests for `path`, after one to warm up."""
    assert client.get(path).status_code == 200, path
    times = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        assert "data-error" not in response.text, (path, response.text[:2000])
    return times


def p50_p95(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def pages(gateway: Gateway) -> dict[str, str]:
    """Every page of docs/api.md section 8, with a real customer and a segment that has members."""
    member = gateway.http.get("/api/segments/lifecycle:active/members", params={"limit": 1}).json()["items"]
    assert member, "the demo shop has no active customer"
    customer = member[0]["customer_id"] if isinstance(member[0], dict) else member[0]
    return {"overview": "/app/", "journey": "/app/journey", "funnels": "/app/funnels",
            "funnel": "/app/funnels/lifecycle", "funnel, channel breakdown": "/app/funnels/lifecycle?breakdown=channel",
            "segments": "/app/segments", "segment": "/app/segments/lifecycle:active",
            "customer": f"/app/customers/{customer}", "follow-ups": "/app/followups"}


def run() -> dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix="fs-bench-dashboard-"))
    try:
        path = directory / "demo-shop.jsonl"
        events = shop.write_jsonl(shop.generate(shop.DEFAULT_SEED, CUSTOMERS), path)
        url, process = serve("bench.dashboard", ["baseline"], {}, directory / "baseline.log")
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                baseline_before = timings(client, "/page")
        finally:
            stop_process(process)
        gateway = Gateway(directory / "data")
        try:
            settled = asyncio.run(import_and_wait(gateway, path)).reflected
            results = {}
            with httpx.Client(base_url=gateway.url, cookies=COOKIE, timeout=60) as client:
                for name, page in pages(gateway).items():
                    results[name] = p50_p95(timings(client, page))
        finally:
            gateway.stop()
        url, process = serve("bench.dashboard", ["baseline"], {}, directory / "baseline.log")
        try:
            with httpx.Client(base_url=url, timeout=60) as client:  # again: the machine's load drifts
                baseline_after = timings(client, "/page")
        finally:
            stop_process(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"events": events, "settled": settled, "pages": results,
            "baseline": p50_p95(baseline_before + baseline_after)}


def main() -> None:
    result = run()
    base50, base95 = result["baseline"]  # type: ignore[misc]
    print(f"dashboard pages over HTTP (uvicorn, loopback, {REQUESTS} requests each, demo shop of {CUSTOMERS:,} "
          f"customers, {result['events']:,} events, applied by every service in {result['settled']:.0f} s); "
          f"bare FastAPI HTML page p50 {base50:.1f} ms, p95 {base95:.1f} ms; target < {TARGET_MS} ms a page")
    slowest = 0.0
    for name, (p50, p95) in result["pages"].items():  # type: ignore[attr-defined]
        slowest = max(slowest, p95)
        print(f"   {name:<26} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  ratio {p50 / base50:5.1f}"
              f"{'' if p95 < TARGET_MS else '  (over the target)'}")
    print(f"   slowest p95 {slowest:.1f} ms: target {'met' if slowest < TARGET_MS else 'not met'}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        import uvicorn

        uvicorn.run(baseline_app(), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
    else:
        main()

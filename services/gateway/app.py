"""The gateway's composition root: upstream clients, in-process services, routes.

A service whose `GATEWAY_<NAME>_URL` is empty runs inside this process (its ASGI app reached
through httpx's ASGI transport, no network hop, all sharing one bus); one with a URL is reached
over HTTP. Either way the request takes the same path through `proxy.forward`.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse

from services.gateway import openapi
from services.gateway.dashboard import routes as dashboard
from services.gateway.proxy import check_path, forward
from services.gateway.rate_limit import GatewayLimits
from services.gateway.routes import service_for
from services.gateway.settings import SERVICES, GatewaySettings
from services.gateway.supervisor import merged_metrics
from shared.auth import bearer_role, resolve_credentials
from shared.bus import Bus, create_bus
from shared.errors import ApiError
from shared.http import read_limited
from shared.observability import request_id
from shared.service import install_operational_shell, metrics_response
from shared.settings import CommonSettings, load_settings

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass
class Upstream:
    name: str
    client: httpx.AsyncClient
    app: FastAPI | None  # set when the service runs in this process


def _service_factory(name: str) -> Callable[..., FastAPI]:
    """The in-process services (imported only when the gateway embeds them)."""
    if name == "ingest":
        from services.ingest.app import create_app as ingest
        from services.ingest.settings import IngestSettings
        return lambda common, bus: ingest(load_settings(IngestSettings, **common), bus)
    if name == "segmentation":
        from services.segmentation.app import create_app as segmentation
        from services.segmentation.settings import SegmentationSettings
        return lambda common, bus: segmentation(load_settings(SegmentationSettings, **common), bus)
    if name == "funnel":
        from services.funnel.app import create_app as funnel
        from services.funnel.settings import FunnelSettings
        return lambda common, bus: funnel(load_settings(FunnelSettings, **common), bus)
    if name == "recommendation":
        from services.recommendation.app import create_app as recommendation
        from services.recommendation.settings import RecommendationSettings
        return lambda common, bus: recommendation(load_settings(RecommendationSettings, **common), bus)
    from services.followup.app import create_app as followup
    from services.followup.settings import FollowupSettings
    return lambda common, bus: followup(load_settings(FollowupSettings, **common), bus)


def _upstreams(settings: GatewaySettings, bus: Bus | None) -> dict[str, Upstream]:
    # In-process services inherit the gateway's common settings (data dir, bus, keys, logging).
    common = settings.model_dump(include=set(CommonSettings.model_fields))
    upstreams = {}
    for name in SERVICES:
        app = None if settings.url_of(name) else _service_factory(name)(common, bus)
        upstreams[name] = Upstream(name, _client(settings, name, app), app)
    return upstreams


def _client(settings: GatewaySettings, name: str, app: FastAPI | None) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.upstream_timeout_seconds)
    if app is None:
        # Drop idle connections well before the service does (HTTP_KEEPALIVE_SECONDS, the same
        # setting everywhere), so a request never goes out on one the service is closing.
        limits = httpx.Limits(keepalive_expiry=settings.http_keepalive_seconds / 2)
        return httpx.AsyncClient(base_url=settings.url_of(name), timeout=timeout, limits=limits)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}", timeout=timeout)


def create_app(settings: GatewaySettings | None = None, monotonic: Callable[[], float] = time.monotonic) -> FastAPI:
    """`monotonic`: the rate limits' clock in seconds (tests move one instead of sleeping)."""
    settings = settings or load_settings(GatewaySettings)
    credentials = resolve_credentials(settings)
    limits = GatewayLimits(settings, credentials, monotonic)
    embedded = [name for name in SERVICES if not settings.url_of(name)]
    bus = create_bus(settings) if embedded else None
    upstreams = _upstreams(settings, bus)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if bus is not None:
                await bus.start()
                stack.push_async_callback(bus.stop)
            for upstream in upstreams.values():
                if upstream.client.is_closed:  # started again after a stop
                    upstream.client = _client(settings, upstream.name, upstream.app)
                stack.push_async_callback(upstream.client.aclose)
                if upstream.app is not None:
                    await stack.enter_async_context(upstream.app.router.lifespan_context(upstream.app))
            yield
            # Stop the in-process services' loops side by side, as separate processes would,
            # rather than one after another as the stack unwinds.
            await asyncio.gather(*(u.app.state.runtime.stop_tasks() for u in upstreams.values() if u.app))

    app = FastAPI(
        title="Funnelstream",
        version="0.1.0",
        description="Customer-funnel platform: ingest, segmentation, funnels, follow-ups.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(limits.check)],  # every route, the gateway's own included
    )
    app.state.settings = settings
    app.state.credentials = credentials
    app.state.upstreams = upstreams
    install_operational_shell(app, "gateway", settings.cors_origins)
    dashboard.install(app)  # /, /app/...: before the catch-all proxy of _add_routes
    _add_routes(app, upstreams)
    return app


def _add_routes(app: FastAPI, upstreams: dict[str, Upstream]) -> None:
    merged_spec: dict[str, Any] = {}

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the gateway answers."""
        return {"status": "ok", "service": "gateway"}

    @app.get("/ready", tags=["operations"], responses={503: {"description": "Not ready: the body says what is not."}})
    async def ready() -> JSONResponse:
        """Readiness of every service, with each one's store, bus and consumer checks."""
        results = await asyncio.gather(*(_ready(u) for u in upstreams.values()))
        services = dict(zip(upstreams, results, strict=True))
        ok = all(r["status"] == "ready" for r in services.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "services": services},
                            status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        children: list[str] = getattr(request.app.state, "children", [])
        if not children:
            return metrics_response()
        # make run's services in processes of their own (supervisor.py): one page for all, as in one process
        texts = await asyncio.gather(*(_metrics_text(upstreams[name]) for name in children))
        return Response(merged_metrics([generate_latest().decode(), *texts]), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> JSONResponse:
        if not merged_spec:
            docs = await asyncio.gather(*(_openapi_of(u) for u in upstreams.values()))
            own = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            merged_spec.update(openapi.merge(own, dict(zip(upstreams, docs, strict=True))))
        return JSONResponse(merged_spec)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Funnelstream API")

    @app.api_route("/{path:path}", methods=ALL_METHODS, include_in_schema=False)
    async def proxy(request: Request) -> Response:
        path = request.scope["path"]  # as decoded; request.url.path drops tabs and newlines
        check_path(path)
        service = service_for(request.method, path)
        if service is None:
            raise ApiError(404, f"No route {request.method} {path}. See /docs for the API.")
        if path.startswith("/api/"):
            bearer_role(request, request.app.state.credentials)  # 401 before any hop
        body = await read_limited(request, request.app.state.settings.max_body_bytes)
        return await forward(upstreams[service].client, service, request, body, request_id.get())


async def _ready(upstream: Upstream) -> dict[str, Any]:
    try:
        response = await upstream.client.get("/ready")
        body: dict[str, Any] = response.json()
        return body
    except (httpx.HTTPError, ValueError) as exc:
        return {"status": "not_ready", "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _metrics_text(upstream: Upstream) -> str:
    try:
        response = await upstream.client.get("/metrics")
    except httpx.HTTPError:
        return ""  # a child starting again: its numbers are back on the next scrape
    return response.text if response.status_code == 200 else ""


async def _openapi_of(upstream: Upstream) -> dict[str, Any]:
    if upstream.app is not None:
        return upstream.app.openapi()
    response = await upstream.client.get("/openapi.json")
    response.raise_for_status()
    doc: dict[str, Any] = response.json()
    return doc

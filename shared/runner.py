"""Serve one app with uvicorn: what `python -m services.<name>` and `make run` call."""
from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from shared.auth import InsecureConfig, resolve_credentials
from shared.observability import configure_logging
from shared.settings import CommonSettings


def serve(settings: CommonSettings, make_app: Callable[[], FastAPI], banner: str = "") -> None:
    configure_logging(settings.log_level, settings.log_format)
    try:
        credentials = resolve_credentials(settings)
    except InsecureConfig as exc:
        sys.exit(f"error: {exc}")
    lines = [banner or f"Serving on http://{settings.host}:{settings.port}"]
    if credentials.dev:
        lines.append(
            "  dev credentials (loopback only): write key 'dev-write-key'; API keys "
            "'dev-admin-key' (admin) and 'dev-reader-key' (reader)"
        )
    app = make_app()
    _print_after_startup(app, "\n".join(lines))
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


def _print_after_startup(app: FastAPI, text: str) -> None:
    """The URLs go last, once migrations ran and consumers started, where a newcomer looks."""
    startup = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        async with startup(app_):
            print(text, file=sys.stderr, flush=True)
            yield

    app.router.lifespan_context = lifespan

"""Serve one app with uvicorn: what `python -m services.<name>` and `make run` call."""
from __future__ import annotations

import sys
from collections.abc import Callable

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
    app = make_app()
    print(banner or f"Serving on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    if credentials.dev:
        print(
            "Dev credentials (loopback only): write key 'dev-write-key', API keys "
            "'dev-admin-key' (admin) and 'dev-reader-key' (reader)",
            file=sys.stderr, flush=True,
        )
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)

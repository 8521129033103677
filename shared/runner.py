"""Serve one app with uvicorn: what `python -m services.<name>` and `make run` call."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import NoReturn

import httpx
import uvicorn
from fastapi import FastAPI

from shared.auth import InsecureConfig, resolve_credentials
from shared.http_server import BodyDeadline, guarded_protocol
from shared.observability import configure_logging
from shared.settings import CommonSettings, S, SettingsError, load_settings


def load(cls: type[S]) -> S:
    """The process's settings from its environment. A value it cannot run with (out of range, not
    a number) stops it here with a line naming the variable, not a traceback."""
    try:
        return load_settings(cls)
    except SettingsError as exc:
        refuse(exc)


def refuse(exc: SettingsError) -> NoReturn:
    sys.exit("\n".join(f"error: {problem}" for problem in exc.problems))


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
    try:
        app = make_app()  # the gateway reads the settings of the services it runs in-process here
    except SettingsError as exc:
        refuse(exc)
    # The modules imported by now live as long as the process: keep their objects out of the garbage
    # collector's full passes, which the many short-lived objects of requests and batches set off
    # every few dozen requests (each pass walked them all: ~190 ms on a loaded machine).
    gc.freeze()
    if not os.environ.get("FUNNELSTREAM_SUPERVISED"):  # a child of make run's gateway: it says where things are
        _print_after_startup(app, "\n".join(lines))
    _exit_0_when_stopped()
    uvicorn.run(
        BodyDeadline(app, settings.http_body_timeout_seconds),
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.http_keepalive_seconds,  # type: ignore[arg-type]  # a float works
        log_config=None,
        access_log=False,
    )


def _exit_0_when_stopped() -> None:
    """Ctrl-C and SIGTERM are how a server is meant to stop. Uvicorn shuts down gracefully, then
    raises the signal again so that the process dies by it, which `make run` reports as an error
    (`make: *** [run] Interrupt`, exit 130 or 143); it ends with exit 0 instead."""
    def stop(signum: int, frame: object) -> None:
        sys.exit(0)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def _print_after_startup(app: FastAPI, text: str) -> None:
    """The URLs go last, once migrations ran and consumers started, where a newcomer looks."""
    startup = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        async with startup(app_):
            print(text, file=sys.stderr, flush=True)
            yield

    app.router.lifespan_context = lifespan


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Ask `url`/health until it answers 200 (None) or the process exits or the time is up (the
    reason, for the caller's own error)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:  # one client: each new one builds a TLS context (~15 ms of CPU)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return f"exited with {process.returncode}"
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    return f"did not answer {url}/health within {timeout:.0f} s"

"""python -m services.gateway: the gateway, with every service whose URL is unset run by it.

This is what `make run` starts: SQLite stores and the embedded bus under DATA_DIR, the services
inside this process, or each in a process of its own with GATEWAY_PROCESSES (supervisor.py).
"""
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import SERVICES, GatewaySettings
from services.gateway.supervisor import Supervisor
from shared.runner import load, serve

settings = load(GatewaySettings)
base = f"http://{settings.host}:{settings.port}"
embedded = [s for s in SERVICES if not settings.url_of(s)]
where = "in this process"
supervisor = None
if settings.processes and embedded:
    supervisor = Supervisor(settings)
    settings = supervisor.start()
    where = f"each in its own process (logs: {supervisor.logs})"
banner = "\n".join([
    f"Funnelstream is up: {base}",
    f"  API docs:  {base}/docs",
    f"  health:    {base}/health   ready: {base}/ready   metrics: {base}/metrics",
    f"  data:      {settings.data_dir.resolve()} (bus: {settings.bus_backend})",
    f"  services {where}: {', '.join(embedded) or 'none'}",
])


def make_app() -> FastAPI:
    app = create_app(settings)
    app.state.children = embedded if supervisor else []
    return app


serve(settings, make_app, banner)

"""python -m services.gateway: the gateway, with every service whose URL is unset in-process.

This is what `make run` starts: one process, SQLite stores and the embedded bus under DATA_DIR.
"""
from services.gateway.app import create_app
from services.gateway.settings import SERVICES, GatewaySettings
from shared.runner import serve

settings = GatewaySettings()
base = f"http://{settings.host}:{settings.port}"
embedded = [s for s in SERVICES if not settings.url_of(s)]
banner = "\n".join([
    f"Funnelstream is up: {base}",
    f"  API docs:  {base}/docs",
    f"  health:    {base}/health   ready: {base}/ready   metrics: {base}/metrics",
    f"  data:      {settings.data_dir.resolve()} (bus: {settings.bus_backend})",
    f"  services in this process: {', '.join(embedded) or 'none'}",
])
serve(settings, lambda: create_app(settings), banner)

"""python -m services.funnel: serve the funnel API and run its consumers."""
from services.funnel.app import create_app
from services.funnel.settings import FunnelSettings
from shared.runner import load, serve

settings = load(FunnelSettings)
serve(settings, lambda: create_app(settings))

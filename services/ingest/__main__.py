"""python -m services.ingest: serve the ingest API and run its consumers."""
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.runner import load, serve

settings = load(IngestSettings)
serve(settings, lambda: create_app(settings))

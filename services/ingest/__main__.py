"""python -m services.ingest: serve the ingest API and run its consumers."""
import gc

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.runner import load, serve

settings = load(IngestSettings)
# The modules just imported live as long as the process: keep their objects out of the garbage
# collector's full passes, which the requests' and the pipeline's many short-lived objects set
# off every few dozen requests (each walked them all: milliseconds per pass).
gc.freeze()
serve(settings, lambda: create_app(settings))

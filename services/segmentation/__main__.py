"""python -m services.segmentation: serve the segmentation API and run its consumers."""
from services.segmentation.app import create_app
from services.segmentation.settings import SegmentationSettings
from shared.runner import load, serve

settings = load(SegmentationSettings)
serve(settings, lambda: create_app(settings))

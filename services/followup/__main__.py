"""python -m services.followup: serve the followup API and run its consumers."""
from services.followup.app import create_app
from services.followup.settings import FollowupSettings
from shared.runner import load, serve

settings = load(FollowupSettings)
serve(settings, lambda: create_app(settings))

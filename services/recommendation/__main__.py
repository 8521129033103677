"""python -m services.recommendation: serve the recommendation API and run its consumer."""
from services.recommendation.app import create_app
from services.recommendation.settings import RecommendationSettings
from shared.runner import load, serve

settings = load(RecommendationSettings)
serve(settings, lambda: create_app(settings))

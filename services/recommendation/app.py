from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.recommendation.api import router
from services.recommendation.handlers import HANDLERS
from services.recommendation.logic import Tuning
from services.recommendation.model_index import ModelIndex
from services.recommendation.settings import RecommendationSettings
from services.recommendation.store import bus_tables, customer_locks
from shared.bus import Bus
from shared.service import ServiceParts, create_service_app
from shared.settings import load_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: RecommendationSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or load_settings(RecommendationSettings)
    parts = ServiceParts(
        name="recommendation",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=HANDLERS,
        customer_locks=customer_locks,
        description="Recommendations: what to offer each customer next, and what is bought together.",
    )
    app = create_service_app(parts, bus)
    app.state.model_index = ModelIndex(Tuning(view_weight=settings.view_weight, half_life_days=settings.half_life_days))
    return app

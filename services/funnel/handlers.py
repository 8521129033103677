"""What the funnel service does with each consumed event type."""
from __future__ import annotations

from shared.consumer import Handlers

HANDLERS: Handlers = {}

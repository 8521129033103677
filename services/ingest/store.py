"""The ingest store: its tables live here and nowhere else."""
from __future__ import annotations

from shared.store import add_bus_tables, make_metadata

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)

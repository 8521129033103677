"""Each funnel's counted attempts as columns in memory, so a report is arithmetic over arrays
rather than a read of every attempt row.

The index is kept current from the store: it holds the funnel's `version` it has applied and
reads only the attempt rows written since (`attempts.version`); when rows were deleted
(`generation` moved) or the definition changed, it reloads the funnel. Every replica reading the
same store sees every replica's writes, at the cost of one small query per report.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.funnel.logic import Funnel
from services.funnel.store import attempts, funnel_versions


@dataclass
class FunnelIndex:
    stages: int
    definition: bytes = b""
    generation: int = -1
    version: int = -1
    slot: dict[str, int] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    depth: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first_at: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    last_at: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    gaps: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))

    def apply(self, rows: Iterable[Any]) -> None:
        """Rows of `attempts` (depth 0: the customer left the funnel)."""
        rows = list(rows)
        fresh = [r.customer_id for r in rows if r.customer_id not in self.slot]
        if fresh:
            self._grow(len(fresh))
            for customer in fresh:
                self.slot[customer] = len(self.ids)
                self.ids.append(customer)
                self.channels.append("")
        for r in rows:
            i = self.slot[r.customer_id]
            times = orjson.loads(r.times)
            self.depth[i] = r.depth
            self.first_at[i] = r.first_at
            self.last_at[i] = r.reached_at
            self.channels[i] = r.channel
            self.gaps[i] = np.nan
            if len(times) > 1:
                self.gaps[i, 1:len(times)] = np.diff(times)

    def _grow(self, extra: int) -> None:
        size = len(self.ids) + extra
        if size <= len(self.depth):
            return
        capacity = max(size, 2 * len(self.depth), 1024)
        self.depth = np.resize(self.depth, capacity)
        self.first_at = np.resize(self.first_at, capacity)
        self.last_at = np.resize(self.last_at, capacity)
        gaps = np.full((capacity, self.stages), np.nan)
        if self.ids:
            gaps[:len(self.ids)] = self.gaps[:len(self.ids)]
        self.gaps = gaps
        self.depth[len(self.ids):] = 0

    def cohort(self, start: float, end: float) -> NDArray[np.bool_]:
        n = len(self.ids)
        mask: NDArray[np.bool_] = (self.depth[:n] > 0) & (self.first_at[:n] >= start) & (self.first_at[:n] < end)
        return mask


class ReportIndexes:
    """One FunnelIndex per funnel, for the process."""

    def __init__(self) -> None:
        self._indexes: dict[str, FunnelIndex] = {}

    async def current(self, session: AsyncSession, funnel: Funnel) -> FunnelIndex:
        definition = orjson.dumps(funnel.to_json())
        row = (await session.execute(select(funnel_versions.c.version, funnel_versions.c.generation)
                                     .where(funnel_versions.c.funnel == funnel.key))).first()
        if row is None:
            return FunnelIndex(len(funnel.stages), definition)
        index = self._indexes.get(funnel.key)
        if index is None or index.generation != row.generation or index.definition != definition:
            index = FunnelIndex(len(funnel.stages), definition, row.generation)
            query = select(attempts).where(attempts.c.funnel == funnel.key, attempts.c.depth > 0)
        else:
            query = select(attempts).where(attempts.c.funnel == funnel.key, attempts.c.version > index.version)
        index.apply(await session.execute(query))
        index.version = max(index.version, row.version)
        self._indexes[funnel.key] = index
        return index

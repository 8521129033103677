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

TOUCH_TYPES = ("page", "track")  # the steps attribution credits


class Growing:
    """A numpy column appended to in place (capacity doubles), read as `values`."""

    def __init__(self, dtype: type) -> None:
        self.data: NDArray[Any] = np.zeros(0, dtype=dtype)
        self.size = 0

    @property
    def values(self) -> NDArray[Any]:
        return self.data[:self.size]

    def extend(self, values: list[Any]) -> None:
        if self.size + len(values) > len(self.data):
            self.data = np.resize(self.data, max(self.size + len(values), 2 * len(self.data), 1024))
        self.data[self.size:self.size + len(values)] = values
        self.size += len(values)

    def replace(self, values: NDArray[Any]) -> None:
        self.data, self.size = values.copy(), len(values)


class Codes:
    """Names (event names, channels) as small integer codes."""

    def __init__(self) -> None:
        self.names: list[Any] = []
        self.code: dict[Any, int] = {}

    def of(self, name: Any) -> int:
        found = self.code.get(name)
        if found is None:
            found = self.code[name] = len(self.names)
            self.names.append(name)
        return found


def spans(start: NDArray[np.int64], count: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """For rows with segments [start, start + count) of a flat column: each element's row position,
    its index in the column and its place within its segment."""
    first = np.cumsum(count) - count
    pos = np.repeat(np.arange(len(count)), count)
    within = np.arange(int(count.sum())) - first[pos]
    return pos, start[pos] + within, within


@dataclass
class Journeys:
    """Every row's journey (attempts.journey) as flat columns: row i's steps (page, track and
    identify events from t1 to the end of the window, in time order, ties by event id) are
    step_at/step_name[step_start[i]:step_start[i] + step_count[i]], its touchpoints (page and
    track steps) likewise in touch_*, and each stage's event revenue (NaN: none) in revenue[i]."""

    stages: int
    compact_at: int = 1 << 16  # columns this long or shorter are never compacted
    step_start: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    step_count: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    touch_start: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    touch_count: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    revenue: NDArray[np.float64] = field(init=False)
    step_at: Growing = field(default_factory=lambda: Growing(np.float64))
    step_name: Growing = field(default_factory=lambda: Growing(np.int64))
    touch_at: Growing = field(default_factory=lambda: Growing(np.float64))
    touch_channel: Growing = field(default_factory=lambda: Growing(np.int64))
    names: Codes = field(default_factory=Codes)
    channels: Codes = field(default_factory=Codes)

    def __post_init__(self) -> None:
        self.revenue = np.full((0, self.stages), np.nan)

    def resize(self, capacity: int, used: int) -> None:
        for name in ("step_start", "step_count", "touch_start", "touch_count"):
            column = np.zeros(capacity, dtype=np.int64)
            column[:used] = getattr(self, name)[:used]
            setattr(self, name, column)
        revenue = np.full((capacity, self.stages), np.nan)
        revenue[:used] = self.revenue[:used]
        self.revenue = revenue

    def write(self, rows: list[int], raws: list[str | None]) -> None:
        """Rows' journeys, appended at the columns' ends (their old segments become garbage,
        compacted away once they are most of the columns)."""
        at: list[float] = []
        names: list[int] = []
        touch_at: list[float] = []
        touch_channel: list[int] = []
        step_count = np.zeros(len(rows), dtype=np.int64)
        touch_count = np.zeros(len(rows), dtype=np.int64)
        name_of, channel_of = self.names.of, self.channels.of
        for n, (i, raw) in enumerate(zip(rows, raws, strict=True)):
            self.revenue[i] = np.nan
            if raw is None:
                continue
            journey = orjson.loads(raw)
            steps = journey.get("steps", [])
            before = len(touch_at)
            for step in steps:
                at.append(step[0])
                names.append(name_of(step[3]))
                if step[2] in TOUCH_TYPES:
                    touch_at.append(step[0])
                    touch_channel.append(channel_of(step[4]))
            step_count[n] = len(steps)
            touch_count[n] = len(touch_at) - before
            for stage, value in enumerate(journey.get("revenue", [])):
                if value is not None:
                    self.revenue[i, stage] = value
        index = np.array(rows, dtype=np.int64)
        self.step_start[index] = self.step_at.size + np.cumsum(step_count) - step_count
        self.step_count[index] = step_count
        self.touch_start[index] = self.touch_at.size + np.cumsum(touch_count) - touch_count
        self.touch_count[index] = touch_count
        self.step_at.extend(at)
        self.step_name.extend(names)
        self.touch_at.extend(touch_at)
        self.touch_channel.extend(touch_channel)

    def compact(self, used: int) -> None:
        """Drop the garbage segments when they are more than half of a column."""
        for prefix, columns in (("step", ("at", "name")), ("touch", ("at", "channel"))):
            start, count = getattr(self, f"{prefix}_start"), getattr(self, f"{prefix}_count")
            live = int(count[:used].sum())
            held: Growing = getattr(self, f"{prefix}_{columns[0]}")
            if held.size <= max(2 * live, self.compact_at):
                continue
            _, index, _ = spans(start[:used], count[:used])
            for column in columns:
                growing: Growing = getattr(self, f"{prefix}_{column}")
                growing.replace(growing.values[index])
            start[:used] = np.cumsum(count[:used]) - count[:used]


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
    stage_at: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))  # t(i), NaN beyond the depth
    raw_journeys: list[str | None] = field(default_factory=list)  # attempts.journey until columns() reads it
    unread: set[int] = field(default_factory=set)  # rows whose journey changed since columns()
    journey_columns: Journeys | None = None

    def __post_init__(self) -> None:
        # One column per stage from the start: a report over no customers (a fresh install, a
        # funnel whose customers were all erased) reads every stage's column and finds it empty.
        if self.gaps.shape[1] != self.stages:
            self.gaps = np.full((len(self.depth), self.stages), np.nan)
        if self.stage_at.shape[1] != self.stages:
            self.stage_at = np.full((len(self.depth), self.stages), np.nan)

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
                self.raw_journeys.append(None)
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
            self.stage_at[i] = np.nan
            self.stage_at[i, :len(times)] = times
            self.raw_journeys[i] = r.journey if r.depth > 0 else None
            self.unread.add(i)

    def _grow(self, extra: int) -> None:
        size = len(self.ids) + extra
        if size <= len(self.depth):
            return
        capacity = max(size, 2 * len(self.depth), 1024)
        self.depth = np.resize(self.depth, capacity)
        self.first_at = np.resize(self.first_at, capacity)
        self.last_at = np.resize(self.last_at, capacity)
        gaps = np.full((capacity, self.stages), np.nan)
        stage_at = np.full((capacity, self.stages), np.nan)
        if self.ids:
            gaps[:len(self.ids)] = self.gaps[:len(self.ids)]
            stage_at[:len(self.ids)] = self.stage_at[:len(self.ids)]
        self.gaps = gaps
        self.stage_at = stage_at
        self.depth[len(self.ids):] = 0

    def journeys(self) -> Journeys:
        """The journeys as columns, brought up to date with the rows applied since the last call
        (the first call reads them all: a reload without journey answers stays cheap)."""
        used = len(self.ids)
        if self.journey_columns is None:
            self.journey_columns = Journeys(self.stages)
        columns = self.journey_columns
        if len(columns.step_start) < len(self.depth):
            columns.resize(len(self.depth), min(len(columns.step_start), used))
        if self.unread:
            rows = sorted(self.unread)
            columns.write(rows, [self.raw_journeys[i] for i in rows])
            for i in rows:
                self.raw_journeys[i] = None
            self.unread.clear()
            columns.compact(used)
        return columns

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

"""What rules are evaluated over, read from the store: a column per field the rules use, for one
customer, a chunk of them, or everyone. Only the columns a rule needs are read."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.rules import FUNNEL_FIELD
from services.segmentation.store import customer_events, funnel_stages, memberships, profiles
from shared.identity import chunks
from shared.rules import MISSING, Behaviour, EventFacts, Rule, behaviours, evaluate, fields, lookup
from shared.store import among

# Profile fields kept as columns of the profiles table.
PROFILE_NUMBERS = {"event_count": profiles.c.event_count, "order_count": profiles.c.order_count,
                   "revenue": profiles.c.revenue, "rfm.r": profiles.c.rfm_r, "rfm.f": profiles.c.rfm_f,
                   "rfm.m": profiles.c.rfm_m, "nps.score": profiles.c.nps_score, "csat.score": profiles.c.csat_score}
PROFILE_TEXTS = {"channel": profiles.c.channel, "value_tier": profiles.c.value_tier, "rfm.label": profiles.c.rfm_label}
# Fields held as built-in memberships (`lifecycle:new` -> lifecycle "new").
MEMBERSHIP_FAMILIES = {"lifecycle": "lifecycle:", "frequency_tier": "frequency:", "nps.category": "nps:"}


class ProfileFacts:
    """Customers (sorted by id) with the columns the rules need."""

    def __init__(self, ids: list[str], columns: dict[str, Sequence[Any] | NDArray[np.float64]],
                 counts: dict[int, NDArray[np.int64]], traits: list[dict[str, Any]]) -> None:
        self.ids = ids
        self.size = len(ids)
        self._columns = columns
        self._counts = counts
        self._traits = traits

    def column(self, field: str) -> Sequence[Any] | NDArray[np.float64]:
        if field not in self._columns and field.startswith("traits."):
            path = field.removeprefix("traits.")
            self._columns[field] = [lookup(t, path) for t in self._traits]
        return self._columns[field]

    def counts(self, behaviour: Behaviour) -> NDArray[np.int64]:
        return self._counts[id(behaviour)]

    def row(self, index: int) -> ProfileFacts:
        """One customer's facts, to explain a decision."""
        return ProfileFacts(
            [self.ids[index]],
            {f: c[index:index + 1] for f, c in self._columns.items()},
            {k: c[index:index + 1] for k, c in self._counts.items()},
            self._traits[index:index + 1],
        )


async def load_facts(session: AsyncSession, rules: list[Rule], now: datetime, customer_ids: list[str] | None) -> ProfileFacts:
    """Facts for `customer_ids` (those with a profile), or for every customer when None."""
    if customer_ids is None:
        return await _load(session, rules, now, None)
    parts = [await _load(session, rules, now, chunk) for chunk in chunks(sorted(set(customer_ids)))]
    return _concat(parts) if len(parts) != 1 else parts[0]


async def _load(session: AsyncSession, rules: list[Rule], now: datetime, chunk: list[str] | None) -> ProfileFacts:
    needed = set().union(*(fields(r) for r in rules))
    wanted_columns = {profiles.c.customer_id}
    wanted_columns |= {PROFILE_NUMBERS[f] for f in needed if f in PROFILE_NUMBERS}
    wanted_columns |= {PROFILE_TEXTS[f] for f in needed if f in PROFILE_TEXTS}
    if needed & {"avg_order_value"}:
        wanted_columns |= {profiles.c.revenue, profiles.c.order_count}
    if "rfm.recency_days" in needed:
        wanted_columns.add(profiles.c.last_order_at)
    if any(f.startswith("traits.") for f in needed):
        wanted_columns.add(profiles.c.traits)
    query = select(*sorted(wanted_columns, key=lambda c: c.name)).order_by(profiles.c.customer_id)
    if chunk is not None:
        query = query.where(among(profiles.c.customer_id, chunk, session))
    rows = (await session.execute(query)).all()
    ids = [r.customer_id for r in rows]
    index = {c: i for i, c in enumerate(ids)}
    columns: dict[str, Sequence[Any] | NDArray[np.float64]] = {}
    for field in needed:
        if field in PROFILE_NUMBERS or field in PROFILE_TEXTS or field in ("avg_order_value", "rfm.recency_days"):
            values = [profile_value(field, r, now) for r in rows]
            columns[field] = values if field in PROFILE_TEXTS else _numbers(values)
        elif field in MEMBERSHIP_FAMILIES:
            columns[field] = await _from_memberships(session, MEMBERSHIP_FAMILIES[field], index, chunk)
        elif match := FUNNEL_FIELD.match(field):
            columns[field] = await _funnel_stage(session, match.group(1), index, chunk)
    traits = [orjson.loads(r.traits) for r in rows] if profiles.c.traits in wanted_columns else [{}] * len(rows)
    counts = {id(b): await _behaviour_counts(session, b, now, index, chunk) for r in rules for b in behaviours(r)}
    return ProfileFacts(ids, columns, counts, traits)


def profile_value(field: str, row: Any, now: datetime) -> Any:
    """A field kept on the profile row (PROFILE_NUMBERS, PROFILE_TEXTS, avg_order_value,
    rfm.recency_days): None for a missing number, MISSING for a missing text."""
    if field in PROFILE_NUMBERS:
        return getattr(row, PROFILE_NUMBERS[field].name)
    if field in PROFILE_TEXTS:
        return _present(getattr(row, PROFILE_TEXTS[field].name))
    if field == "avg_order_value":
        return row.revenue / row.order_count if row.order_count else None
    assert field == "rfm.recency_days", field
    return (now - row.last_order_at).total_seconds() / 86400 if row.last_order_at else None


def _numbers(values: list[Any]) -> NDArray[np.float64]:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _present(value: Any) -> Any:
    return MISSING if value is None else value


async def _from_memberships(session: AsyncSession, family: str, index: dict[str, int], chunk: list[str] | None) -> list[Any]:
    column: list[Any] = [MISSING] * len(index)
    query = select(memberships.c.customer_id, memberships.c.segment).where(memberships.c.segment.startswith(family))
    if chunk is not None:
        query = query.where(among(memberships.c.customer_id, chunk, session))
    for customer, segment in await session.execute(query):
        if (i := index.get(customer)) is not None:
            column[i] = segment.removeprefix(family)
    return column


async def _funnel_stage(session: AsyncSession, funnel: str, index: dict[str, int], chunk: list[str] | None) -> list[Any]:
    column: list[Any] = [MISSING] * len(index)
    query = select(funnel_stages.c.customer_id, funnel_stages.c.stage).where(funnel_stages.c.funnel == funnel)
    if chunk is not None:
        query = query.where(among(funnel_stages.c.customer_id, chunk, session))
    for customer, stage in await session.execute(query):
        if (i := index.get(customer)) is not None and stage is not None:
            column[i] = stage
    return column


async def _behaviour_counts(
    session: AsyncSession, behaviour: Behaviour, now: datetime, index: dict[str, int], chunk: list[str] | None
) -> NDArray[np.int64]:
    """Per customer, their events named `behaviour.event` within its days that pass its `where`."""
    wanted = [customer_events.c.customer_id] + ([customer_events.c.properties] if behaviour.where else [])
    query = select(*wanted).where(customer_events.c.name == behaviour.event,
                                  customer_events.c.at > now - timedelta(days=behaviour.within_days))
    if chunk is not None:
        query = query.where(among(customer_events.c.customer_id, chunk, session))
    rows = (await session.execute(query)).all()
    if behaviour.where is not None:
        passed = evaluate(behaviour.where, EventFacts([orjson.loads(r.properties) for r in rows]))
        rows = [r for r, ok in zip(rows, passed.tolist(), strict=True) if ok]
    counts = np.zeros(len(index), dtype=np.int64)
    for customer, n in Counter(r.customer_id for r in rows).items():
        if (i := index.get(customer)) is not None:
            counts[i] = n
    return counts


def _concat(parts: list[ProfileFacts]) -> ProfileFacts:
    if not parts:
        return ProfileFacts([], {}, {}, [])
    first = parts[0]
    columns: dict[str, Sequence[Any] | NDArray[np.float64]] = {}
    for field, column in first._columns.items():
        if isinstance(column, np.ndarray):
            columns[field] = np.concatenate([p._columns[field] for p in parts])
        else:
            columns[field] = [v for p in parts for v in p._columns[field]]
    counts = {k: np.concatenate([p._counts[k] for p in parts]) for k in first._counts}
    return ProfileFacts([i for p in parts for i in p.ids], columns, counts, [t for p in parts for t in p._traits])

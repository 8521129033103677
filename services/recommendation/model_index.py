"""Each process's model, kept current from the store.

It holds the `model_state` version it has applied and, when a batch has changed customers since,
reads only those customers' facts again (`changes.version`), folds them into profiles and builds
the model's arrays anew (a fraction of a second for the whole Online Retail file): an order
consumed is in the next answer. When customers were erased (`generation` moved) it reloads
everything. Every replica reading the same store sees every replica's writes, at the cost of one
small query per request.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.recommendation.logic import Fact, Model, Profile, Tuning, profile
from services.recommendation.store import changes, countries, facts, model_state
from shared.identity import chunks


@dataclass
class ModelIndex:
    tuning: Tuning
    generation: int = -1
    version: int = -1
    profiles: dict[str, Profile] = field(default_factory=dict)
    countries: dict[str, str] = field(default_factory=dict)
    model: Model | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def current(self, session: AsyncSession) -> Model:
        async with self._lock:
            row = (await session.execute(select(model_state.c.version, model_state.c.generation))).first()
            version, generation = (row.version, row.generation) if row else (0, 0)
            if generation != self.generation:
                await self._reload(session)
            elif version > self.version:
                await self._refresh(session, self.version)
            elif self.model is not None:
                return self.model
            self.generation, self.version = generation, max(version, self.version)
            self.model = Model(self.profiles, self.countries, self.tuning)
            return self.model

    async def _reload(self, session: AsyncSession) -> None:
        self.profiles, self.countries = {}, {}
        by_customer = _facts_by_customer(await session.execute(select(facts)))
        self.profiles = {c: profile(f) for c, f in by_customer.items()}
        self.countries = dict((await session.execute(select(countries.c.customer_id, countries.c.country))).tuples().all())

    async def _refresh(self, session: AsyncSession, since: int) -> None:
        changed = list((await session.execute(select(changes.c.customer_id).where(changes.c.version > since))).scalars())
        for chunk in chunks(sorted(changed)):
            by_customer = _facts_by_customer(await session.execute(select(facts).where(facts.c.customer_id.in_(chunk))))
            held = dict((await session.execute(select(countries.c.customer_id, countries.c.country)
                                               .where(countries.c.customer_id.in_(chunk)))).tuples().all())
            for customer in chunk:
                self._replace(customer, by_customer.get(customer), held.get(customer))

    def _replace(self, customer: str, found: list[Fact] | None, country: str | None) -> None:
        self.profiles.pop(customer, None)
        self.countries.pop(customer, None)
        if found:
            self.profiles[customer] = profile(found)
        if country is not None:
            self.countries[customer] = country


def _facts_by_customer(rows: Iterable[Any]) -> dict[str, list[Fact]]:
    found: dict[str, list[Fact]] = defaultdict(list)
    for r in rows:
        found[r.customer_id].append(as_fact(r))
    return found


def as_fact(row: Any) -> Fact:
    return Fact(row.product_id, row.kind, row.quantity, row.order_id, row.at)

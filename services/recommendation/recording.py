"""What consumed events change in the recommendation store: the product facts and countries of a
batch of interactions, a customers.v1 link (the merged id's facts and country become the
customer's), an erasure, and the version under which changed customers are recorded, which the
models of every process read (see `model_index`)."""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from services.recommendation.logic import KINDS, country_of, facts_of
from services.recommendation.store import (
    bus_tables,
    changes,
    countries,
    customer_tables,
    erasures,
    facts,
    links,
    model_state,
)
from shared.bulk import BulkWrite, inserting_new
from shared.events import CustomerErased, Interaction
from shared.identity import canonical_ids, chunks, erase, not_erased, relink
from shared.store import among

# The batch's rows go to the driver as tuples, compiled once (shared/bulk.py): SQLAlchemy's own
# executemany builds and walks a dict per row, more than the rest of recording a fact (issue 13).
_FACT_COLUMNS = ("event_id", "line", "customer_id", "product_id", "kind", "quantity", "order_id", "at")
_INSERT_FACTS = BulkWrite(inserting_new(facts), _FACT_COLUMNS)


def _upserting_changes(dialect: str) -> Insert:
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(changes)
    return statement.on_conflict_do_update(index_elements=[changes.c.customer_id],
                                           set_={"version": statement.excluded.version})


_RECORD_CHANGES = BulkWrite(_upserting_changes, ("customer_id", "version"))


async def record_interactions(session: AsyncSession, events: list[Interaction]) -> set[str]:
    """Write the batch's product facts (a redelivered or replayed event writes the same rows:
    keyed by event and line) and the countries its traits named. Returns the customers changed."""
    batch = await not_erased(session, erasures, events)
    merged = await canonical_ids(session, links, [e.customer_id for e in batch])
    rows, customers, latest = _rows_of(batch, merged)
    await _INSERT_FACTS.run(session, rows)
    await _keep_countries(session, latest)
    return customers | latest.keys()


def _rows_of(batch: list[Interaction], merged: dict[str, str]) -> tuple[list[tuple[object, ...]], set[str], dict[str, tuple[float, str]]]:
    """The batch's fact rows, the customers they are about and, per customer, the country named
    latest (by event time) with that time. An event with neither facts nor a country (a page, a
    sign-up) is passed over before its time and customer are worked out."""
    rows: list[tuple[object, ...]] = []
    customers: set[str] = set()
    latest: dict[str, tuple[float, str]] = {}
    for e in batch:
        tracked = e.type == "track" and e.name in KINDS
        country = country_of(e.traits, e.context)
        if not tracked and country is None:
            continue
        customer, at = merged.get(e.customer_id, e.customer_id), e.occurred_at.timestamp()
        lines = facts_of(e.name, e.properties, e.event_id, at) if tracked else []
        if lines:
            customers.add(customer)
            rows += [(e.event_id, n, customer, *f) for n, f in enumerate(lines)]
        if country is not None and at >= latest.get(customer, (-1.0, ""))[0]:
            latest[customer] = (at, country)
    return rows, customers, latest


async def _keep_countries(session: AsyncSession, latest: dict[str, tuple[float, str]]) -> None:
    """Per customer, the country named latest (by event time) wins, in whatever order they come."""
    for chunk in chunks(sorted(latest)):
        held = dict((await session.execute(select(countries.c.customer_id, countries.c.at)
                                           .where(among(countries.c.customer_id, chunk, session)))).tuples().all())
        rows = [{"customer_id": c, "country": latest[c][1], "at": latest[c][0]} for c in chunk]
        new = [row for row in rows if row["customer_id"] not in held]
        later = [row for row in rows if row["customer_id"] in held and row["at"] >= held[row["customer_id"]]]
        if new:
            await session.execute(insert(countries), new)
        if later:  # one statement for the chunk, not one per customer
            await session.execute(_REPLACE_COUNTRY, [{"k_customer": r["customer_id"], "v_country": r["country"],
                                                      "v_at": r["at"]} for r in later])


# Bound names differ from the columns' (SQLAlchemy reserves those for SET values).
_REPLACE_COUNTRY = (update(countries).where(countries.c.customer_id == bindparam("k_customer"))
                    .values(country=bindparam("v_country"), at=bindparam("v_at")))


async def merge_customer(session: AsyncSession, merged: str, customer: str) -> None:
    """The merged id's facts become the customer's, and its country too where named later."""
    await relink(session, links, merged, customer)
    await session.execute(update(facts).where(facts.c.customer_id == merged).values(customer_id=customer))
    theirs = (await session.execute(select(countries.c.at, countries.c.country).where(countries.c.customer_id == merged))).first()
    if theirs is not None:
        await session.execute(delete(countries).where(countries.c.customer_id == merged))
        await _keep_countries(session, {customer: (theirs.at, theirs.country)})


async def erase_customer(session: AsyncSession, event: CustomerErased) -> list[str]:
    """Every row about the customer, under any of their ids, goes, and so do their events waiting
    in the outbox; a new generation makes every model reload. Returns the ids."""
    everyone = await erase(session, links, erasures, event, customer_tables, bus_tables.outbox)
    await bump(session, erased=True)
    return everyone


async def record_changes(session: AsyncSession, customers: Iterable[str]) -> None:
    """The customers changed in a new version (nothing when there are none)."""
    changed = sorted(customers)
    if changed:
        version = await bump(session)
        await _RECORD_CHANGES.run(session, [(c, version) for c in changed])  # one upsert, not delete and insert


async def bump(session: AsyncSession, erased: bool = False) -> int:
    """The next version (and generation, when customers were erased); the row stays locked until
    the transaction ends, so versions become visible in order."""
    values = {"version": model_state.c.version + 1} | ({"generation": model_state.c.generation + 1} if erased else {})
    version = await session.scalar(update(model_state).values(**values).returning(model_state.c.version))
    if version is None:  # the first batch ever
        await session.execute(insert(model_state).values(id=1, version=1, generation=int(erased)))
        return 1
    return int(version)

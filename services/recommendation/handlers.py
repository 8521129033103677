"""What the recommendation service does with each consumed event: the product facts of a batch
of interactions are written once per batch (a redelivered or replayed event writes the same
rows: keyed by event and line); links move the merged id's facts to the customer; erasures delete
the customer everywhere. Every batch that changed customers records them under a new version,
which the models of every process read (see `model_index`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.recommendation.logic import country_of, facts_of
from services.recommendation.store import (
    bus_tables,
    changes,
    countries,
    erasures,
    facts,
    links,
    model_state,
)
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked, ErasureRecorded, Interaction
from shared.identity import (
    canonical_ids,
    chunks,
    drop_outgoing_about,
    erase,
    not_erased,
    on_erasure_recorded,
    relink,
)
from shared.store import insert_ignoring_conflicts

ROWS_PER_INSERT = 500  # SQLite caps bound parameters per statement


@dataclass
class Pending:
    interactions: list[Interaction] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)


def _pending(tx: Transaction) -> Pending:
    found: Pending = tx.state.setdefault("recommendation", Pending())
    return found


def _schedule_version(tx: Transaction) -> None:
    async def record_changes() -> None:
        dirty, _pending(tx).dirty = sorted(_pending(tx).dirty), set()
        if dirty:
            version = await bump(tx.session)
            for chunk in chunks(dirty):
                await tx.session.execute(delete(changes).where(changes.c.customer_id.in_(chunk)))
                await tx.session.execute(insert(changes), [{"customer_id": c, "version": version} for c in chunk])

    tx.defer("recommendation.changes", record_changes)


async def bump(session: AsyncSession, erased: bool = False) -> int:
    """The next version (and generation, when customers were erased); the row stays locked until
    the transaction ends, so versions become visible in order."""
    values = {"version": model_state.c.version + 1} | ({"generation": model_state.c.generation + 1} if erased else {})
    version = await session.scalar(update(model_state).values(**values).returning(model_state.c.version))
    if version is None:  # the first batch ever
        await session.execute(insert(model_state).values(id=1, version=1, generation=int(erased)))
        return 1
    return int(version)


async def on_interaction(event: Interaction, tx: Transaction) -> None:
    _pending(tx).interactions.append(event)
    tx.defer("recommendation.record", lambda: _record(tx))


async def _record(tx: Transaction) -> None:
    session, pending = tx.session, _pending(tx)
    batch, pending.interactions = await not_erased(session, erasures, pending.interactions), []
    merged = await canonical_ids(session, links, [e.customer_id for e in batch])
    rows: list[dict[str, object]] = []
    latest: dict[str, tuple[float, str]] = {}
    for e in batch:
        customer, at = merged.get(e.customer_id, e.customer_id), e.occurred_at.timestamp()
        lines = facts_of(e.name, e.properties, e.event_id, at) if e.type == "track" else []
        rows += [{"event_id": e.event_id, "line": n, "customer_id": customer, **f._asdict()} for n, f in enumerate(lines)]
        country = country_of(e.traits, e.context)
        if country is not None and at >= latest.get(customer, (-1.0, ""))[0]:
            latest[customer] = (at, country)
    for start in range(0, len(rows), ROWS_PER_INSERT):
        await session.execute(insert_ignoring_conflicts(facts, session), rows[start:start + ROWS_PER_INSERT])
    await _keep_countries(session, latest)
    pending.dirty |= {str(r["customer_id"]) for r in rows} | latest.keys()
    _schedule_version(tx)


async def _keep_countries(session: AsyncSession, latest: dict[str, tuple[float, str]]) -> None:
    """Per customer, the country named latest (by event time) wins, in whatever order they come."""
    for chunk in chunks(sorted(latest)):
        held = dict((await session.execute(select(countries.c.customer_id, countries.c.at)
                                           .where(countries.c.customer_id.in_(chunk)))).tuples().all())
        for customer in chunk:
            at, country = latest[customer]
            if customer not in held:
                await session.execute(insert(countries).values(customer_id=customer, country=country, at=at))
            elif at >= held[customer]:
                await session.execute(update(countries).where(countries.c.customer_id == customer)
                                      .values(country=country, at=at))


async def on_linked(event: CustomerLinked, tx: Transaction) -> None:
    """The merged id's facts become the customer's: one customer, one profile."""
    session, merged, customer = tx.session, event.merged_id, event.customer_id
    await relink(session, links, merged, customer)
    await session.execute(update(facts).where(facts.c.customer_id == merged).values(customer_id=customer))
    theirs = (await session.execute(select(countries.c.at, countries.c.country).where(countries.c.customer_id == merged))).first()
    if theirs is not None:
        await session.execute(delete(countries).where(countries.c.customer_id == merged))
        await _keep_countries(session, {customer: (theirs.at, theirs.country)})
    _pending(tx).dirty |= {merged, customer}
    _schedule_version(tx)


async def on_erased(event: CustomerErased, tx: Transaction) -> None:
    everyone = await erase(tx.session, links, erasures, event, (facts, countries, changes), bus_tables.outbox)
    await bump(tx.session, erased=True)
    _pending(tx).dirty.difference_update(everyone)
    drop_outgoing_about(tx, everyone)


async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
    await on_erasure_recorded(tx.session, erasures, event)


HANDLERS: Handlers = handlers_of(on(Interaction, on_interaction), on(CustomerLinked, on_linked),
                                 on(CustomerErased, on_erased), on(ErasureRecorded, on_hashed_erasure))

"""Merges (an identify linking a visitor to a user: every sign-up) and erasures find a customer's
rows by lookups, not by reading whole tables: every statement they run against the funnel's
tables searches an index. SQLite's EXPLAIN QUERY PLAN is the sharp check (it says SCAN for a whole
table or index read through); PostgreSQL's, with sequential scans priced out, catches only a
statement no index serves at all (it may read a whole index, e.g. (funnel, customer_id) by the
customer alone, and say Index Scan). And the state they leave is the one a brute-force
reference expects: merged histories counted under the customer, erased ids gone from every
table, everyone else's rows untouched. SQLite and PostgreSQL."""
from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select

from services.funnel.app import MIGRATIONS
from services.funnel.logic import LIFECYCLE, Matched
from services.funnel.store import attempts, events, matches, transitions
from services.funnel.tracking import add_definition
from shared.events import CustomerErased, CustomerLinked, Event, Interaction
from shared.store import Store
from tests.funnel.test_advancing import KINDS, NOW, QUICK, attempt_rows, consume, customer_events, interaction, recounted_whole
from tests.funnel.test_semantics import reference_attempt

USERS = [f"c{n:02d}" for n in range(10)]
VISITORS = [f"v{n:02d}" for n in range(6)]
# visitor -> the user it becomes; v05's user is erased after the link, n02 is a user with no history.
LINKS = {"v00": "c00", "v01": "c01", "v02": "n02", "v05": "c05"}
ERASED = {"c03", "c04", "v04", "c05", "v05"}  # c04 with v04 named in the erasure, c05 with v05 through its link
# Tables scanned on purpose: one row per funnel, and the outbox the relay keeps drained.
SMALL_TABLES = {"funnels", "funnel_versions", "outbox"}


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.migrate(MIGRATIONS)
    async with store.transaction() as session:
        await add_definition(session, QUICK, NOW)
    yield store
    await store.dispose()


def history(seed: int) -> list[Interaction]:
    rng = random.Random(seed)
    return sorted((e for c in USERS + VISITORS for e in customer_events(rng, c)), key=lambda e: e.occurred_at)


async def consume_in_batches(store: Store, stream: Sequence[Event], size: int = 7) -> None:
    for start in range(0, len(stream), size):
        await consume(store, list(stream[start:start + size]))


TABLES = (attempts, events, matches, transitions)


async def all_rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    async with store.read() as session:
        return {t.name: [dict(r) for r in (await session.execute(select(t))).mappings()] for t in TABLES}


def rows_of(rows: list[dict[str, Any]], customers: set[str], among: bool = True) -> list[dict[str, Any]]:
    return sorted((r for r in rows if (r["customer_id"] in customers) == among), key=repr)


def reference_lifecycle(sent: list[Interaction]) -> dict[str, tuple[float, ...]]:
    """Per surviving customer, the lifecycle attempt's times (KINDS gives each event's stages)."""
    matched: dict[str, list[Matched]] = {}
    for e in {e.event_id: e for e in reversed(sent)}.values():  # the first copy of each event
        customer = LINKS.get(e.customer_id, e.customer_id)
        if e.customer_id in ERASED or customer in ERASED:
            continue
        kind = next(k for k, (t, n, _) in KINDS.items() if (t, n) == (e.type, e.name)
                    and (t != "identify" or ("email" in e.traits) == (k == "email")))
        if KINDS[kind][2]:
            matched.setdefault(customer, []).append(Matched(e.occurred_at.timestamp(), e.event_id, KINDS[kind][2]))
    return {c: t for c, m in matched.items() if (t := reference_attempt(LIFECYCLE, m))}


@pytest.mark.parametrize("seed", [1, 2])
async def test_merges_and_erasures_leave_the_reference_state(store: Store, seed: int) -> None:
    sent = history(seed)
    await consume_in_batches(store, sent)
    before = await all_rows(store)
    involved = ERASED | set(LINKS) | set(LINKS.values())
    changes: list[Event] = [CustomerLinked(customer_id=c, merged_id=v, at=NOW) for v, c in LINKS.items()]
    changes.insert(1, changes[0])  # a redelivered link changes nothing
    changes += [CustomerErased(customer_id="c03", at=NOW), CustomerErased(customer_id="c04", merged_ids=["v04"], at=NOW),
                CustomerErased(customer_id="c05", at=NOW)]
    late = [interaction("v01-late", "v01", "order", 300), interaction("c01-late", "c01", "view", 301)]
    await consume_in_batches(store, [*changes, *late], size=3)
    sent += late

    held = await attempt_rows(store)
    assert held == await recounted_whole(store)
    lifecycle = {c: tuple(orjson.loads(row[1])) for (f, c), row in held.items() if f == "lifecycle"}
    assert lifecycle == reference_lifecycle(sent)
    after = await all_rows(store)
    for name, rows in after.items():
        # erased ids are nowhere, not even as removal markers; merged-away ids hold markers at most
        assert not rows_of(rows, ERASED), name
        assert all(name == "attempts" and r["depth"] == 0 for r in rows_of(rows, set(LINKS) - ERASED)), name
        # the customers no change was about: their rows as they were, to the version
        assert rows_of(rows, involved, among=False) == rows_of(before[name], involved, among=False), name
    assert rows_of(after["attempts"], set(LINKS) - ERASED)  # the merged ids' attempts became markers


def scans_of(plan: Sequence[tuple[Any, ...]], dialect: str) -> list[str]:
    """The plan's steps that read a whole table of the funnel's other than the small ones."""
    if dialect == "sqlite":
        details = [str(r[-1]) for r in plan]
        return [d for d in details if d.startswith("SCAN ") and "VIRTUAL TABLE" not in d and d != "SCAN CONSTANT ROW"
                and d.split()[1] not in SMALL_TABLES]
    lines = [str(r[0]) for r in plan]
    return [line for line in lines if "Seq Scan on " in line and line.split("Seq Scan on ")[1].split()[0] not in SMALL_TABLES]


async def test_merges_and_erasures_search_indexes(store: Store) -> None:
    await consume_in_batches(store, history(3))
    ran: list[tuple[str, Any]] = []

    def remember(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not executemany:
            ran.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", remember)
    try:
        await consume(store, [CustomerLinked(customer_id="c00", merged_id="v00", at=NOW), interaction("v00-x", "v00", "view", 1)])
        await consume(store, [CustomerErased(customer_id="c01", merged_ids=["v01"], at=NOW)])
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", remember)
    assert any("attempts" in s and "customer_id" in s for s, _ in ran)
    dialect = store.engine.dialect.name
    scans: dict[str, list[str]] = {}
    async with store.transaction() as session:
        conn = await session.connection()
        if dialect == "postgresql":
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, parameters in ran:
            if statement.lstrip().split()[0].upper() not in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                continue
            explain = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "
            plan = (await conn.exec_driver_sql(explain + statement, tuple(parameters))).tuples().all()
            if found := scans_of(plan, dialect):
                scans[" ".join(statement.split())] = found
        await session.rollback()
    assert not scans

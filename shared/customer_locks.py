"""Per-customer locks for consumed batches, so replicas of a service can share stitched customers.

In scale mode a stitched customer's events sit in two partitions, read by two replicas: the
link (visitor X is now user U) with U's events in one, X's late events in the other. Without a
lock, the replica holding X's late order reads `links` (no link yet), the other commits the link
and moves X's rows into U (the order is not committed yet, so not moved), then the order commits
under X: lost to U for good. And once linked, both replicas read-modify-write U's rows.

So every consumed batch on PostgreSQL first locks the customers its events name (every id an
event carries, and the customer each id is merged into), before any handler runs. Two batches
touching one customer take turns, and the second reads `links` after the first committed. Ids
are hashed into `BUCKETS` rows of `customer_locks`, locked in ascending order in one statement
(no deadlock between batches). Row locks, not advisory locks: a row lock is kept in the row, not
in PostgreSQL's shared lock table, which a few replicas locking a thousand ids per batch could
fill ("out of shared memory"). The table holds bucket numbers only, never an id (nothing to
erase). Unrelated customers sharing a bucket only wait for each other. SQLite runs one writer
at a time: nothing to lock.
"""
from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import Event
from shared.identity import canonical_ids
from shared.store import insert_ignoring_conflicts

log = logging.getLogger("funnelstream.customer_locks")

# Changing it needs a migration in every consuming service that refills `customer_locks`.
BUCKETS = 4096


@dataclass(frozen=True)
class CustomerLocks:
    """A service's `customer_locks` table, and its `links` (ids merged into a customer)."""

    table: Table
    links: Table

    async def hold(self, session: AsyncSession, events: Iterable[Event]) -> None:
        """Lock the customers of `events` until the transaction ends (PostgreSQL). The links are
        read again once locked: one committed meanwhile may name a customer not locked yet,
        whose bucket is then locked too (out of order: a rare deadlock, run again by the loop)."""
        if session.bind is None or session.bind.dialect.name != "postgresql":
            return
        ids = set().union(*(ids_of(e) for e in events))
        held: set[int] = set()
        while wanted := {bucket_of(i) for i in ids | set((await canonical_ids(session, self.links, ids)).values())} - held:
            await self._lock(session, sorted(wanted))
            held |= wanted

    async def _lock(self, session: AsyncSession, buckets: list[int]) -> None:
        bucket = self.table.c.bucket
        locking = select(bucket).where(bucket.in_(buckets)).order_by(bucket).with_for_update()
        locked = (await session.execute(locking)).scalars().all()
        if len(locked) != len(buckets):
            # A missing row would lock nothing, silently (a table emptied by hand): put the rows
            # back and lock them; the migration fills all of them, so this is the rare path.
            log.warning("customer_locks lacked %d bucket rows; restoring them", len(buckets) - len(locked))
            await session.execute(insert_ignoring_conflicts(self.table, session),
                                  [{"bucket": b} for b in sorted(set(buckets) - set(locked))])
            await session.execute(locking)


def ids_of(event: Event) -> set[str]:
    """Every customer id an event names: the customer, an interaction's user and anonymous ids,
    a link's merged id, an erasure's merged ids."""
    found = {event.customer_id}
    for name in ("user_id", "anonymous_id", "merged_id"):
        if isinstance(value := getattr(event, name, None), str):
            found.add(value)
    found.update(getattr(event, "merged_ids", ()))
    return found


def bucket_of(customer_id: str) -> int:
    """Stable across processes (Python's `hash` of a str is not)."""
    return zlib.crc32(customer_id.encode()) % BUCKETS


def add_customer_locks(metadata: MetaData, links: Table) -> CustomerLocks:
    """For a consuming service's store: the `customer_locks` table (see `create_customer_locks_table`)."""
    return CustomerLocks(Table("customer_locks", metadata, *_columns()), links)


def _columns() -> list[Column[Any]]:
    return [Column("bucket", Integer, primary_key=True, autoincrement=False)]


def create_customer_locks_table(op: Any) -> None:
    """For a consuming service's migration: the table, filled with its `BUCKETS` rows."""
    table = op.create_table("customer_locks", *_columns())
    op.bulk_insert(table, [{"bucket": b} for b in range(BUCKETS)])

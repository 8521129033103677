"""Rows keyed by (customer_id, name) that hold the latest of something (a customer's stage in a
funnel, their membership of a segment), kept batch-first: one read per chunk of a consumed
batch's customers, the decisions in memory in the batch's order, one bulk insert and one bulk
update to write them (issue 13: a few statements per batch, not three per event)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bulk import BulkWrite
from shared.identity import chunks
from shared.store import among

Key = tuple[str, str]  # (customer_id, name)


async def read_keyed(session: AsyncSession, table: Table, name: str, keys: Iterable[Key]) -> dict[Key, dict[str, Any]]:
    """The rows held for these keys, as dicts, by key (a key without a row is absent)."""
    wanted = set(keys)
    names = sorted({n for _, n in wanted})
    found: dict[Key, dict[str, Any]] = {}
    for chunk in chunks(sorted({c for c, _ in wanted})):
        rows = await session.execute(select(table).where(among(table.c.customer_id, chunk, session), table.c[name].in_(names)))
        for row in rows.mappings():
            key = (row["customer_id"], row[name])
            if key in wanted:
                found[key] = dict(row)
    return found


class KeyedWrites:
    """Writes rows of `table` keyed by (customer_id, `name`) through the driver (shared/bulk.py):
    the new ones inserted, the others replacing what is held, each a tuple; two statements
    compiled once, whatever the number of rows."""

    def __init__(self, table: Table, name: str) -> None:
        self.name = name
        self.columns = tuple(c.name for c in table.columns)
        self.values = tuple(c for c in self.columns if c not in ("customer_id", name))
        self.insert = BulkWrite(lambda _: insert(table), self.columns)
        self.update = BulkWrite(lambda _: update(table).where(
            table.c.customer_id == bindparam("k_customer"), table.c[name] == bindparam("k_name")).values(
            {c: bindparam(f"v_{c}", type_=table.c[c].type) for c in self.values}),
            ("k_customer", "k_name", *(f"v_{c}" for c in self.values)))

    async def write(self, session: AsyncSession, rows: dict[Key, dict[str, Any]], inserted: set[Key]) -> None:
        """Write `rows` (whole rows, by key): those in `inserted` are new, the others replace what is held."""
        await self.insert.run(session, [tuple(row[c] for c in self.columns) for key, row in rows.items() if key in inserted])
        await self.update.run(session, [(row["customer_id"], row[self.name], *(row[c] for c in self.values))
                                        for key, row in rows.items() if key not in inserted])

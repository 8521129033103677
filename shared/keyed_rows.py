"""Rows keyed by (customer_id, name) that hold the latest of something (a customer's stage in a
funnel, their membership of a segment), kept batch-first: one read per chunk of a consumed
batch's customers, the decisions in memory in the batch's order, one bulk insert and one bulk
update to write them (issue 13: a few statements per batch, not three per event)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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


async def write_keyed(session: AsyncSession, table: Table, name: str, rows: dict[Key, dict[str, Any]],
                      inserted: set[Key]) -> None:
    """Write `rows` (whole rows, by key): those in `inserted` are new, the others replace what is held."""
    new = [row for key, row in rows.items() if key in inserted]
    changed = [row for key, row in rows.items() if key not in inserted]
    if new:
        await session.execute(insert(table), new)
    if changed:
        columns = [c for c in changed[0] if c not in ("customer_id", name)]
        statement = update(table).where(table.c.customer_id == bindparam("k_customer"),
                                        table.c[name] == bindparam("k_name")).values(
            {c: bindparam(f"v_{c}") for c in columns})
        await session.execute(statement, [{"k_customer": r["customer_id"], "k_name": r[name],
                                           **{f"v_{c}": r[c] for c in columns}} for r in changed])

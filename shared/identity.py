"""What every consuming service does alike about who a customer is: ids merged into another
(customers.v1 links), erasure tombstones, and traits where the latest identify wins.

Each service keeps its own `links` (alias_id -> customer_id) and `erasures` (id_hash, at)
tables (`add_identity_tables`); these helpers take them as arguments.

A tombstone holds a keyed hash of an erased id (HMAC-SHA256 with `ERASURE_KEY`), never the id:
enough to recognise the id when a late or replayed event names it, useless to anyone reading the
store without the key. Every process uses the same key (`use_erasure_key` at startup).
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from shared.consumer import Transaction
from shared.events import CustomerErased, ErasureRecorded, Interaction
from shared.settings import CommonSettings
from shared.store import UTCDateTime, among, insert_ignoring_conflicts

CHUNK = 5000  # bounded IN lists (SQLite caps bound parameters per statement)
DEV_ERASURE_KEY = "dev-erasure-key"

_erasure_key: bytes | None = None


def resolve_erasure_key(settings: CommonSettings) -> bytes:
    """`ERASURE_KEY`; else the dev key on loopback (as with the dev API keys); else refuse."""
    from shared.auth import InsecureConfig, is_loopback

    if settings.erasure_key:
        return settings.erasure_key.encode()
    if not is_loopback(settings.host):
        raise InsecureConfig(
            f"HOST={settings.host} is not a loopback address and ERASURE_KEY is not set: refusing to start with "
            "the public dev key for erasure tombstones. Set ERASURE_KEY to a long random secret (the same in "
            "every process, e.g. `openssl rand -hex 32`), or bind to 127.0.0.1.")
    return DEV_ERASURE_KEY.encode()


def use_erasure_key(key: bytes) -> None:
    """The key this process hashes erased ids with (set once at startup; all services share it)."""
    global _erasure_key
    _erasure_key = key
    _hashes.clear()


# Hashes already worked out, under the current key: every consumed batch looks up its customers'
# tombstones, an HMAC each, mostly of customers seen in earlier batches (issue 13: a twentieth of
# the follow-up consumer's time). At most REMEMBERED_HASHES held, then forgotten at once.
REMEMBERED_HASHES = 100_000
_hashes: dict[str, str] = {}


def id_hash(customer_id: str) -> str:
    """The keyed hash a tombstone keeps for an erased id (64 hex digits)."""
    found = _hashes.get(customer_id)
    if found is None:
        if _erasure_key is None:
            use_erasure_key(resolve_erasure_key(CommonSettings()))
        assert _erasure_key is not None
        found = hmac.new(_erasure_key, customer_id.encode(), hashlib.sha256).hexdigest()
        if len(_hashes) >= REMEMBERED_HASHES:
            _hashes.clear()
        _hashes[customer_id] = found
    return found


def tombstone_hashes(erased: list[str]) -> list[str]:
    """The hashes tombstones keep for these erased ids, which leave the remembered hashes: nothing
    in the process keeps an erased id."""
    hashes = [id_hash(i) for i in erased]
    for i in erased:
        _hashes.pop(i, None)
    return hashes


def add_erasures_table(metadata: MetaData) -> Table:
    """`erasures`: keyed hashes of erased ids and when, holding nothing else about the person."""
    return Table(
        "erasures",
        metadata,
        Column("id_hash", String(64), primary_key=True),
        Column("at", UTCDateTime, nullable=False),
    )


def add_identity_tables(metadata: MetaData) -> tuple[Table, Table]:
    """`links`: ids merged into a customer (from customers.v1), so their late events land on the
    customer. `erasures`: see `add_erasures_table`."""
    links = Table(
        "links",
        metadata,
        Column("alias_id", String(200), primary_key=True),
        Column("customer_id", String(200), nullable=False, index=True),
    )
    return links, add_erasures_table(metadata)


async def erase(session: AsyncSession, links: Table, erasures: Table, event: CustomerErased,
                tables: Iterable[Table], outbox: Table | None = None) -> list[str]:
    """Delete every row of `tables` about the customer, under any of their ids, and the events
    about them still waiting in `outbox`; remember the erasure (hashed) so events from before it
    that arrive later do not bring them back. Returns the ids."""
    everyone = await erased_ids(session, links, event)
    for table in (*tables, links):
        await session.execute(delete(table).where(table.c.customer_id.in_(everyone)))
    await session.execute(delete(links).where(links.c.alias_id.in_(everyone)))
    if outbox is not None:
        await session.execute(delete(outbox).where(outbox.c.key.in_(everyone)))
    await add_tombstones(session, erasures, tombstone_hashes(everyone), event.at)
    return everyone


async def erased_ids(session: AsyncSession, links: Table, event: CustomerErased) -> list[str]:
    """The ids an erasure is about: the customer's, those merged into it, and their aliases."""
    everyone = [event.customer_id, *event.merged_ids]
    return everyone + list((await session.execute(
        select(links.c.alias_id).where(links.c.customer_id.in_(everyone)))).scalars())


def drop_outgoing_about(tx: Transaction, ids: Iterable[str]) -> None:
    """Events about the erased customer that this transaction's handlers publish (before or after
    the erasure, in deferred work too) are dropped, not sent: nothing about them reaches the log
    after the erasure. Runs again after any work deferred later."""
    erased: set[str] = tx.state.setdefault("erasure.erased-ids", set())
    erased.update(ids)

    async def drop() -> None:
        tx.outbox.records = [r for r in tx.outbox.records if r.key not in erased]
        if tx.deferred:  # other work is still to run: drop again after it (one key: no ping-pong)
            tx.defer("erasure.drop-outgoing", drop)

    tx.defer("erasure.drop-outgoing", drop)


async def add_tombstones(session: AsyncSession, erasures: Table, hashes: Iterable[str], at: datetime) -> None:
    """Tombstones for these id hashes, at `at` or the later erasure already held."""
    wanted = sorted(set(hashes))
    held = dict((await session.execute(
        select(erasures.c.id_hash, erasures.c.at).where(erasures.c.id_hash.in_(wanted)))).tuples().all())
    await session.execute(delete(erasures).where(erasures.c.id_hash.in_(wanted)))
    await session.execute(insert(erasures), [{"id_hash": h, "at": max(at, held.get(h, at))} for h in wanted])


async def on_erasure_recorded(session: AsyncSession, erasures: Table, event: ErasureRecorded) -> None:
    """An erasure as the bus log keeps it once every service applied it (hashes only): replayed
    into an empty store, it keeps the customer's late events out as the original did."""
    await add_tombstones(session, erasures, event.id_hashes, event.at)


async def erased_at(session: AsyncSession, erasures: Table, ids: Iterable[str | None]) -> datetime | None:
    """When the latest of these ids was erased, if any was."""
    hashes = sorted({id_hash(i) for i in ids if i})
    return await session.scalar(select(erasures.c.at).where(erasures.c.id_hash.in_(hashes)).order_by(erasures.c.at.desc()).limit(1))


def chunks(items: list[str], size: int = CHUNK) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


async def canonical_ids(session: AsyncSession, links: Table, ids: Iterable[str]) -> dict[str, str]:
    """id -> the customer it was merged into, for the ids that were."""
    found: dict[str, str] = {}
    for chunk in chunks(sorted(set(ids))):
        rows = await session.execute(select(links.c.alias_id, links.c.customer_id).where(among(links.c.alias_id, chunk, session)))
        found |= dict(rows.tuples().all())
    return found


async def relink(session: AsyncSession, links: Table, merged_id: str, customer_id: str) -> None:
    """`merged_id`, and every id merged into it before, now names `customer_id` (a customers.v1
    link; a redelivered one changes nothing)."""
    await session.execute(update(links).where(links.c.customer_id == merged_id).values(customer_id=customer_id))
    await session.execute(insert_ignoring_conflicts(links, session).values(alias_id=merged_id, customer_id=customer_id))


async def not_erased(session: AsyncSession, erasures: Table, events: list[Interaction]) -> list[Interaction]:
    """The events, without those about a customer erased after they happened (late or replayed):
    a tombstone keeps an erased customer from coming back; later events start a new customer."""
    erased = await erasure_times(session, erasures, (i for e in events for i in (e.customer_id, e.user_id, e.anonymous_id)))
    if not erased:
        return events
    return [e for e in events
            if not any(i in erased and e.occurred_at <= erased[i] for i in (e.customer_id, e.user_id, e.anonymous_id) if i)]


async def erasure_times(session: AsyncSession | AsyncConnection, erasures: Table,
                        ids: Iterable[str | None]) -> dict[str, datetime]:
    """id -> when it was erased, for the ids that were (tombstones are looked up by hash)."""
    hashes = {i: id_hash(i) for i in set(ids) if i}  # each id once: a batch names its customers many times
    by_hash: dict[str, datetime] = {}
    for chunk in chunks(sorted(set(hashes.values()))):
        rows = await session.execute(select(erasures.c.id_hash, erasures.c.at).where(among(erasures.c.id_hash, chunk, session)))
        by_hash |= dict(rows.tuples().all())
    return {i: by_hash[h] for i, h in hashes.items() if h in by_hash}


def merge_traits(
    mine: tuple[dict[str, Any], dict[str, str]], theirs: tuple[dict[str, Any], dict[str, str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(traits, when each was set) merged: per trait, the value set latest wins (ISO-8601 UTC
    strings compare in time order), so identifies may arrive in any order."""
    traits, traits_at = dict(mine[0]), dict(mine[1])
    for name, value in theirs[0].items():
        if name not in traits_at or theirs[1][name] >= traits_at[name]:
            traits[name], traits_at[name] = value, theirs[1][name]
    return traits, traits_at


def later_move(order: str | None, at: datetime, held_seq: str | None, held_at: datetime) -> bool:
    """Is a funnel move (FunnelStageChanged `order`, `at`) at least as recent as the one held?
    By the order the funnel service recorded them when both have one, else by time."""
    if order is not None and held_seq is not None:
        return order >= held_seq
    return at >= held_at


def hash_erasure_tombstones(op: Any) -> None:
    """Data migration: `erasures` rows keyed by plain ids become rows keyed by their hashes (the
    table is rebuilt, so no page keeps the old primary key)."""
    conn = op.get_bind()
    rows = conn.execute(text("SELECT customer_id, at FROM erasures")).all()
    op.drop_table("erasures")
    op.create_table("erasures", Column("id_hash", String(64), primary_key=True), Column("at", UTCDateTime, nullable=False))
    if rows:
        conn.execute(text("INSERT INTO erasures (id_hash, at) VALUES (:h, :at)"),
                     [{"h": id_hash(customer_id), "at": at} for customer_id, at in rows])


def unhash_erasure_tombstones(op: Any) -> None:
    """Downgrade: the old shape, empty (a hash cannot be turned back into the id)."""
    op.drop_table("erasures")
    op.create_table("erasures", Column("customer_id", String(200), primary_key=True),
                    Column("at", UTCDateTime, nullable=False))

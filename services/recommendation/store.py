"""The recommendation store: every product fact customers made (order and refund lines, views,
cart adds), their countries (for the cold start), and which customers changed when, so each
process's model reads only what changed since it last looked (see `model_index`)."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Integer, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.customer_locks import add_customer_locks
from shared.identity import add_identity_tables
from shared.store import add_bus_tables, make_metadata

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)

# One row per product line of an interaction (`line`: its place among the event's lines, so a
# redelivered event writes the same rows). A refund of a whole order has product_id "".
facts = Table(
    "facts",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("product_id", String(200), nullable=False),
    Column("kind", String(10), nullable=False),  # order, refund, view, cart
    Column("quantity", Float, nullable=False),
    Column("order_id", String(200), nullable=False),
    Column("at", Float, nullable=False),  # epoch seconds
)

# The latest country a customer's traits named (identify traits or context.traits).
countries = Table(
    "countries",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("country", String(200), nullable=False),
    Column("at", Float, nullable=False),
)

# Which customers changed in which version (a merged id too: the model drops it).
changes = Table(
    "changes",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("version", BigInteger, nullable=False, index=True),
)

# One row: `version` goes up with every batch that changed customers (the row stays locked until
# that transaction commits, so versions become visible in order); `generation` moves when
# customers were erased, and models reload everything.
model_state = Table(
    "model_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
)

links, erasures = add_identity_tables(metadata)
customer_locks = add_customer_locks(metadata, links)  # taken by each consumed batch

# Every table that holds rows about a customer: an erasure deletes theirs from each.
customer_tables = (facts, countries, changes)


async def country_of(session: AsyncSession, customer: str) -> str | None:
    """The latest country the customer's traits named, if any."""
    return await session.scalar(select(countries.c.country).where(countries.c.customer_id == customer))

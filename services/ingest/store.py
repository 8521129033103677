"""The ingest store: customers' timelines, identity links, seen message ids and the quarantine."""
from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary, String, Table, Text

from shared.identity import add_erasures_table
from shared.store import BigId, UTCDateTime, add_bus_tables, make_metadata

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)

# One row per accepted event; `body` is the canonical event (interactions.v1) as JSON. On a
# link, `customer_id` moves to the canonical id; the timeline reads this column, not the body.
events = Table(
    "events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("ix_events_customer_timeline", "customer_id", "occurred_at", "event_id"),
)

# Accepted requests waiting for the pipeline: one row per request. The request commits this row
# and answers; the pipeline does the rest (dedupe, stitching, timeline). `packed_inbox` holds them
# in the layout of inbox.py; `inbox` the rows of earlier releases (the messages as a JSON array),
# which the pipeline applies first. A table of its own, so an earlier release's replica still
# running beside this one during an upgrade never reads a row it cannot (it reads only `inbox`).
def _inbox_table(name: str) -> Table:
    return Table(name, metadata, Column("id", BigId, primary_key=True, autoincrement=True),
                 Column("received_at", UTCDateTime, nullable=False), Column("messages", LargeBinary, nullable=False))


inbox = _inbox_table("inbox")
packed_inbox = _inbox_table("packed_inbox")
INBOXES = (inbox, packed_inbox)  # in the order the pipeline applies them

# Message ids seen within the dedupe window (older rows are pruned).
seen_messages = Table(
    "seen_messages",
    metadata,
    Column("message_id", String(200), primary_key=True),
    Column("seen_at", UTCDateTime, nullable=False, index=True),
)

# An id (anonymous id, or an alias's previous id) and the canonical customer id it now counts for.
identities = Table(
    "identities",
    metadata,
    Column("alias_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("linked_at", UTCDateTime, nullable=False),
)

# Rejected messages, kept with the reason so nothing is silently lost.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Column("message_id", String(200)),
    Column("user_id", String(200), index=True),
    Column("anonymous_id", String(200), index=True),
    Column("raw", LargeBinary, nullable=False),
)

# Erased ids (keyed hashes) and when: a message from before the erasure that arrives after it
# (an SDK retrying, an import) is acknowledged and dropped, never stored or published.
erasures = add_erasures_table(metadata)

"""The funnel store: definitions, the events funnels are built from, each customer's counted
attempt per funnel, and the transitions."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, String, Table, Text

from shared.identity import add_identity_tables
from shared.store import BigId, UTCDateTime, add_bus_tables, make_metadata

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)

funnels = Table(
    "funnels",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("definition", Text, nullable=False),  # JSON, as the API returns it
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# A slim copy of every interaction of the last FUNNEL_EVENTS_RETENTION_DAYS: what stages match on
# (type, name, properties with traits and context). A new or edited funnel is built from it.
events = Table(
    "events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("type", String(20), nullable=False),
    Column("name", String(200)),
    Column("document", LargeBinary, nullable=False),
    Column("channel", String(50), nullable=False),
    Column("at", UTCDateTime, nullable=False, index=True),
    Index("ix_events_customer_at", "customer_id", "at"),
)

# Per funnel, the events that match at least one stage (bit i: stage i), all a counted attempt needs.
matches = Table(
    "matches",
    metadata,
    Column("funnel", String(100), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("at", Float, nullable=False),  # epoch seconds
    Column("stages", Integer, nullable=False),
    Column("channel", String(50), nullable=False),
    Index("ix_matches_funnel_customer", "funnel", "customer_id"),
)

# Each customer's counted attempt per funnel: the stage reached and the times and events of each
# stage, kept current with every matched event; reports read only this. `version` says which
# recount wrote the row (see funnel_versions); depth 0 marks a customer removed from the funnel
# (merged away, erased) until the hourly cleanup deletes the row.
attempts = Table(
    "attempts",
    metadata,
    Column("funnel", String(100), primary_key=True),
    Column("customer_id", String(200), primary_key=True),
    Column("depth", Integer, nullable=False),
    Column("times", Text, nullable=False),  # JSON list of epoch seconds, one per stage reached
    Column("event_ids", Text, nullable=False),  # JSON list
    Column("first_at", Float, nullable=False),  # t1: the cohort
    Column("reached_at", Float, nullable=False),  # when the current stage was reached
    Column("channel", String(50), nullable=False),  # of the first step's event
    Column("version", BigInteger, nullable=False),
    Index("ix_attempts_funnel_first_at", "funnel", "first_at"),
    Index("ix_attempts_funnel_depth_reached", "funnel", "depth", "reached_at"),
    Index("ix_attempts_funnel_version", "funnel", "version"),
)

# Per funnel: `version` goes up with every transaction that writes attempts (the row is locked
# until that transaction commits, so versions become visible in order), and `generation` changes
# when rows are deleted: a report index reads only the rows above the version it holds, and
# reloads everything when the generation moved.
funnel_versions = Table(
    "funnel_versions",
    metadata,
    Column("funnel", String(100), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
)

transitions = Table(
    "transitions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("funnel", String(100), nullable=False),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("from_stage", String(100)),
    Column("to_stage", String(100)),
    Column("at", UTCDateTime, nullable=False),
    Column("event_id", String(200)),
    Index("ix_transitions_funnel_id", "funnel", "id"),
)

# From customers.v1 and segments.v1: merged ids, erasures, current segment memberships and traits
# (for breakdowns by segment and by trait).
links, erasures = add_identity_tables(metadata)
segment_members = Table(
    "segment_members",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("segment", String(200), primary_key=True),
    Column("member", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_segment_members_segment", "segment", "customer_id"),
)
traits = Table(
    "traits",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("traits", LargeBinary, nullable=False),
    Column("traits_at", LargeBinary, nullable=False),
)

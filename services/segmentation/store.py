"""The segmentation store: profiles, orders, segment memberships and their history."""
from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, LargeBinary, String, Table, Text

from shared.identity import add_identity_tables
from shared.store import BigId, UTCDateTime, add_bus_tables, make_metadata

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)

# One row per customer. `traits_at` holds, per trait, when it was set, so a late identify never
# overwrites a newer value; `channel_at` is the time of the event that gave the first touch.
profiles = Table(
    "profiles",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("traits", LargeBinary, nullable=False),
    Column("traits_at", LargeBinary, nullable=False),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("order_count", Integer, nullable=False),
    Column("revenue", Float, nullable=False),
    Column("last_order_at", UTCDateTime, index=True),
    Column("channel", String(50)),
    Column("channel_at", UTCDateTime),
    # Written by the population recompute (value tier and RFM are relative to all buyers).
    Column("value_tier", String(20)),
    Column("rfm_r", Integer),
    Column("rfm_f", Integer),
    Column("rfm_m", Integer),
    Column("rfm_label", String(40)),
)

# Every order, so counts, revenue and the 365-day frequency stay right under late and repeated events.
orders = Table(
    "orders",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("amount", Float, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("segment", String(200), primary_key=True),
    Column("since", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_memberships_segment", "segment", "customer_id"),
)

history = Table(
    "membership_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("segment", String(200), nullable=False),
    Column("change", String(10), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_membership_history_segment_at", "segment", "at"),
)

links, erasures = add_identity_tables(metadata)

# When each scheduled job last ran, so a restart resumes where it stopped.
job_runs = Table(
    "job_runs",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("last_run_at", UTCDateTime, nullable=False),
)

# Custom segments (API.md section 3): the rule as the user wrote it (JSON), checked on write.
segment_definitions = Table(
    "segment_definitions",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# The customer's track, page and screen events of the last SEGMENTATION_EVENTS_RETENTION_DAYS, for
# behaviour conditions ("did X at least N times within D days"). Keyed by event id: replays and
# redeliveries land once.
customer_events = Table(
    "customer_events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("properties", LargeBinary, nullable=False),
    Index("ix_customer_events_customer_name_at", "customer_id", "name", "at"),
    Index("ix_customer_events_name_at", "name", "at"),
)

# Each customer's current stage in each funnel (from funnel.v1), for `funnel.<key>.stage`.
funnel_stages = Table(
    "funnel_stages",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("funnel", String(100), primary_key=True),
    Column("stage", String(100)),
    Column("at", UTCDateTime, nullable=False),
    Column("seq", String(40)),  # FunnelStageChanged.order: the latest recorded move wins
)

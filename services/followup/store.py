"""The follow-up store: policies and their versions, follow-ups, what each customer is in now
(segments, funnel stages), and the webhook deliveries still to make."""
from __future__ import annotations

from sqlalchemy import Column, Index, Integer, LargeBinary, String, Table, Text

from shared.customer_locks import add_customer_locks
from shared.identity import add_identity_tables
from shared.store import UTCDateTime, add_bus_tables, make_metadata

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)
links, erasures = add_identity_tables(metadata)
customer_locks = add_customer_locks(metadata, links)  # taken by each consumed batch

# Every version of every policy that was written (the defaults are version 1 until edited).
policies = Table(
    "policies",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", Text, nullable=False),
    Column("current", Integer, nullable=False),  # 1 for the version in force, 0 for older ones
    Column("deleted", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

followups = Table(
    "followups",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("policy", String(100)),
    Column("policy_version", Integer),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("channel", String(20), nullable=False),
    Column("priority", String(10), nullable=False),
    Column("assignee", String(200), index=True),
    # pending / due / overdue / done / cancelled, as the scheduler last moved it; reads work out
    # the open statuses from due_at and the clock, so they are exact between passes.
    Column("status", String(10), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    Column("outcome", String(50)),
    Column("note", Text),
    Column("reason", Text, nullable=False),
    # "<customer>|<policy>" while open, else NULL: one open follow-up per (customer, policy).
    Column("open_slot", String(310), unique=True),
    # What created it (a bus event, a stall, the previous one of a cadence): never twice.
    Column("trigger_key", String(200), unique=True),
    Index("ix_followups_status_due_at", "status", "due_at"),
    Index("ix_followups_due_at", "due_at"),
)

# What each customer is in now, for "still qualifies" and stalled stages.
memberships = Table(
    "memberships",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("segment", String(200), primary_key=True),
    Column("member", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)
stages = Table(
    "stages",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("funnel", String(100), primary_key=True),
    Column("stage", String(100)),
    Column("since", UTCDateTime, nullable=False),
    Column("seq", String(40)),  # FunnelStageChanged.order: the latest recorded move wins
    Index("ix_stages_funnel_stage_since", "funnel", "stage", "since"),
)

# Webhook reminders: written with the status change that causes them, sent (and retried with
# backoff) by the sender until a 2xx answer; `id` is what receivers dedupe on.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("followup_id", String(64), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("event", String(40), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime),  # NULL once delivered or given up
    Column("delivered_at", UTCDateTime),
    Column("last_error", Text),
    Index("ix_deliveries_next_attempt_at", "next_attempt_at"),
)

# Every table that holds rows about a customer: an erasure deletes theirs from each (their
# follow-ups' deliveries go first, see followups.erase_customer).
customer_tables = (followups, memberships, stages)

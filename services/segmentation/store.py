"""The segmentation store: profiles, orders, segment memberships and their history; and the
queries the API and the scheduled pass make of them (the writes that follow events live beside
the rules they apply: recording.py, evaluation.py, custom.py, feedback.py)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (BigInteger, Column, Dialect, Float, Index, Integer, LargeBinary, Row, String, Table, Text,
                        func, select, text, update)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeDecorator

from shared.customer_locks import add_customer_locks
from shared.identity import add_identity_tables, canonical_ids
from shared.store import BigId, UTCDateTime, add_bus_tables, dialect_of, insert_ignoring_conflicts, make_metadata


class Blob(TypeDecorator[bytes]):
    """LargeBinary bound as the bytes it is given: both drivers take bytes, and SQLAlchemy's own
    conversion copies each value into the DB-API's Binary (a memoryview on SQLite)."""

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


metadata = make_metadata()
bus_tables = add_bus_tables(metadata)

# One row per customer. `traits_at` holds, per trait, when it was set, so a late identify never
# overwrites a newer value; `channel_at` is the time of the event that gave the first touch.
profiles = Table(
    "profiles",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("traits", Blob, nullable=False),
    Column("traits_at", Blob, nullable=False),
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
    # The latest survey answers (docs/api.md section 11), from survey_answers by event time.
    Column("nps_score", Integer),
    Column("nps_at", UTCDateTime),
    Column("csat_score", Integer),
    Column("csat_at", UTCDateTime),
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
customer_locks = add_customer_locks(metadata, links)  # taken by each consumed batch

# When each scheduled job last ran, so a restart resumes where it stopped.
job_runs = Table(
    "job_runs",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("last_run_at", UTCDateTime, nullable=False),
)

# Custom segments (docs/api.md section 3): the rule as the user wrote it (JSON), checked on write.
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
    Column("at", UTCDateTime, nullable=False),  # no index of its own: (name, at) serves the prune too
    Column("properties", Blob, nullable=False),
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

# Every valid `Survey Responded` answer (docs/api.md section 11), keyed by event id so replays and
# redeliveries land once; the profile's `nps` and `csat` are each customer's latest by event time.
survey_answers = Table(
    "survey_answers",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("survey", String(10), nullable=False),
    Column("score", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("channel", String(50)),
    Index("ix_survey_answers_customer_id", "customer_id", "survey", "at"),
    Index("ix_survey_answers_survey_at", "survey", "at"),
)

# Whose facts changed, and when (a version in commit order), for the facts previews keep in memory
# (facts_index.py). Written by the code that writes a table a rule reads (profiles, memberships,
# customer_events, funnel_stages), through `mark_facts_changed`; a profile deleted or renamed
# (erasure, merge) moves the generation instead (`forget_facts`). No triggers since migration 0012.
fact_changes = Table(
    "fact_changes",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("version", BigInteger, nullable=False, index=True),
)
fact_generation = Table(
    "fact_generation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
)

# Every table that holds rows about a customer: an erasure deletes theirs from each.
customer_tables = (profiles, orders, memberships, history, customer_events, funnel_stages, survey_answers)


# A customer marked once in a transaction is marked for all of it: on SQLite writers take turns and
# readers see the transaction's writes together, on PostgreSQL every mark is the transaction's id.
_MARKED = "segmentation.facts_marked"
# One statement marks them all (a trigger per row cost about twice as much, issue 13): those with a
# profile, in id order (two writers that meet wait, not deadlock), returning whom it marked.
_MARK = {
    "sqlite": ("INSERT INTO fact_changes (customer_id, version) SELECT customer_id, "
               "(SELECT coalesce(max(version), 0) + 1 FROM fact_changes) FROM profiles "
               "WHERE customer_id IN (SELECT value FROM json_each(:c)) ORDER BY customer_id "
               "ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version RETURNING customer_id"),
    "postgresql": ("INSERT INTO fact_changes (customer_id, version) SELECT customer_id, pg_current_xact_id()::text::bigint "
                   "FROM profiles WHERE customer_id = ANY(CAST(:c AS text[])) ORDER BY customer_id "
                   "ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version RETURNING customer_id"),
}


def facts_marked(session: AsyncSession) -> set[str]:
    """The customers marked changed in `fact_changes` in the session's open transaction."""
    transaction = session.sync_session.get_transaction()
    held = session.info.get(_MARKED)
    if held is None or held[0] is not transaction:
        held = session.info[_MARKED] = (transaction, set())
    marked: set[str] = held[1]
    return marked


async def mark_facts_changed(session: AsyncSession, customers: Iterable[str]) -> None:
    """These customers' facts changed (a write to their profile, memberships, behaviour events or
    funnel stages): marked, those with a profile only (no profile, no facts), and not again in the
    same transaction. Every writer of those tables calls it (no trigger does, migration 0012)."""
    marked = facts_marked(session)
    wanted = sorted(set(customers) - marked)
    if not wanted:
        return
    if dialect_of(session) == "sqlite":
        statement = text(_MARK["sqlite"]).bindparams(c=orjson.dumps(wanted).decode())
    else:
        statement = text(_MARK["postgresql"]).bindparams(c=wanted)  # one array: no IN list of thousands to render
    marked.update((await session.execute(statement)).scalars())  # a customer without a profile stays unmarked


async def forget_facts(session: AsyncSession, customers: Iterable[str]) -> None:
    """These ids' profiles went (erasure, merge): their marks go too (no erased id stays), and the
    generation moves, so previews load every customer again."""
    gone = sorted(set(customers))
    await session.execute(fact_changes.delete().where(fact_changes.c.customer_id.in_(gone)))
    await session.execute(update(fact_generation).values(generation=fact_generation.c.generation + 1))
    facts_marked(session).difference_update(gone)  # a profile written again later in the transaction is marked again


async def canonical(session: AsyncSession, customer_id: str) -> str:
    """The customer an id was merged into (customers.v1), or the id itself."""
    return (await canonical_ids(session, links, [customer_id])).get(customer_id, customer_id)


async def profile(session: AsyncSession, customer_id: str) -> Row[Any] | None:
    """The customer's profile row (None without one)."""
    return (await session.execute(select(profiles).where(profiles.c.customer_id == customer_id))).first()


async def memberships_of(session: AsyncSession, customer_id: str) -> Sequence[Row[Any]]:
    """The customer's memberships, by segment key."""
    return (await session.execute(select(memberships).where(memberships.c.customer_id == customer_id)
                                  .order_by(memberships.c.segment))).all()


async def member_counts(session: AsyncSession, keys: list[str] | None = None) -> dict[str, int]:
    """Members per segment (these `keys`, or every segment with one); a segment without any is absent."""
    query = select(memberships.c.segment, func.count()).group_by(memberships.c.segment)
    if keys is not None:
        query = query.where(memberships.c.segment.in_(keys))
    return {segment: int(n) for segment, n in (await session.execute(query)).all()}


async def members(session: AsyncSession, segment: str, after: str | None, limit: int) -> Sequence[Row[Any]]:
    """Up to `limit` memberships of the segment, by customer id, after customer `after`."""
    query = select(memberships).where(memberships.c.segment == segment).order_by(memberships.c.customer_id).limit(limit)
    if after is not None:
        query = query.where(memberships.c.customer_id > after)
    return (await session.execute(query)).all()


async def history_page(session: AsyncSession, segment: str, customer_id: str | None, before: int | None,
                       limit: int) -> Sequence[Row[Any]]:
    """Up to `limit` entries and exits of the segment (of one customer, when given), newest
    first, recorded before history row `before`."""
    query = select(history).where(history.c.segment == segment).order_by(history.c.id.desc()).limit(limit)
    if customer_id:
        query = query.where(history.c.customer_id == customer_id)
    if before is not None:
        query = query.where(history.c.id < before)
    return (await session.execute(query)).all()


async def size_at(session: AsyncSession, segment: str, at: datetime) -> int:
    """Members at `at`: entries minus exits recorded before it."""
    rows = await session.execute(select(history.c.change, func.count()).where(
        history.c.segment == segment, history.c.at < at).group_by(history.c.change))
    counts = dict(rows.tuples().all())
    return int(counts.get("entered", 0)) - int(counts.get("exited", 0))


async def changes_between(session: AsyncSession, segment: str, start: datetime, end: datetime) -> Sequence[Row[Any]]:
    """The segment's entries and exits (`at`, `change`) in [start, end), oldest first."""
    return (await session.execute(select(history.c.at, history.c.change).where(
        history.c.segment == segment, history.c.at >= start, history.c.at < end).order_by(history.c.at))).all()


async def last_run(session: AsyncSession, job: str) -> datetime | None:
    """When the job last ran (None: never)."""
    at: datetime | None = await session.scalar(select(job_runs.c.last_run_at).where(job_runs.c.name == job))
    return at


async def record_run(session: AsyncSession, job: str, at: datetime) -> None:
    await session.execute(insert_ignoring_conflicts(job_runs, session).values(name=job, last_run_at=at))
    await session.execute(update(job_runs).where(job_runs.c.name == job).values(last_run_at=at))

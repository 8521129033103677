"""Applying the segment rules to the store: memberships change, history records it, and every
change is published on segments.v1 (through the outbox, in the same transaction).

- Per customer, after their events (once per consumed batch): lifecycle and frequency tier
  (`evaluate_customers`).
- For all buyers at once, every `reevaluate_seconds`: value tier and RFM, which are relative to
  the whole population, and the time-based segments of customers whose last order or oldest
  in-window order crossed a threshold since the previous run (`jobs.reevaluate`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import orjson
from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation import logic
from services.segmentation.logic import Thresholds, nps_category
from services.segmentation.store import history, mark_facts_changed, memberships, orders, profiles
from shared.bulk import BulkWrite
from shared.bus.base import OutgoingRecord
from shared.events import SegmentChanged, record, stable_id
from shared.identity import chunks
from shared.outbox import Outbox
from shared.store import among

CUSTOMER_FAMILIES = ("lifecycle:", "frequency:", "nps:")
POPULATION_FAMILIES = ("value:", "rfm:")


# The writes `apply` makes, a row per membership (shared/bulk.py: compiled once, rows as tuples).
_one_membership = (memberships.c.customer_id == bindparam("c", type_=memberships.c.customer_id.type),
                   memberships.c.segment == bindparam("s", type_=memberships.c.segment.type))
ENDED = BulkWrite(lambda _: delete(memberships).where(*_one_membership), ("c", "s"))
ENTERED = BulkWrite(lambda _: insert(memberships), ("customer_id", "segment", "since", "reason"))
REWORDED = BulkWrite(
    lambda _: update(memberships).where(*_one_membership).values(reason=bindparam("r", type_=memberships.c.reason.type)),
    ("r", "c", "s"))
RECORDED = BulkWrite(lambda _: insert(history), ("customer_id", "segment", "change", "at", "reason"))


def days_between(earlier: datetime, later: datetime) -> float:
    return (later - earlier).total_seconds() / 86400


@dataclass(frozen=True)
class Wanted:
    """The segments (with the reason for each) a customer should be in, within some families."""

    customer_id: str
    segments: dict[str, str]


async def evaluate_customers(
    session: AsyncSession, customer_ids: list[str], now: datetime, t: Thresholds, outbox: Outbox
) -> int:
    """Lifecycle and frequency tier of these customers, a chunk at a time (a few queries per
    chunk, whatever its size). Returns how many memberships changed."""
    changed = 0
    since = now - timedelta(days=t.frequency_window_days)
    recent = (select(func.count()).where(orders.c.customer_id == profiles.c.customer_id, orders.c.at > since)
              .scalar_subquery().label("recent_orders"))
    for chunk in chunks(customer_ids):
        rows = (await session.execute(
            select(profiles.c.customer_id, profiles.c.order_count, profiles.c.last_order_at, profiles.c.nps_score, recent)
            .where(among(profiles.c.customer_id, chunk, session)))).all()
        wanted = [Wanted(r.customer_id, _customer_segments(r.order_count, r.last_order_at, r.recent_orders, now, t)
                         | nps_segment(r.nps_score)) for r in rows]
        changed += await apply(session, wanted, CUSTOMER_FAMILIES, now, outbox)
    return changed


def _customer_segments(
    order_count: int, last_order_at: datetime | None, recent_orders: int, now: datetime, t: Thresholds
) -> dict[str, str]:
    days = days_between(last_order_at, now) if last_order_at else None
    stage = logic.lifecycle(order_count, days, t)
    wanted = {f"lifecycle:{stage}": _lifecycle_reason(stage, order_count, days, t)}
    if tier := logic.frequency_tier(recent_orders, t):
        wanted[f"frequency:{tier}"] = f"{recent_orders} order(s) in the last {t.frequency_window_days:g} days"
    return wanted


def nps_segment(score: int | None) -> dict[str, str]:
    """`nps:<category>` of the latest NPS answer (docs/api.md section 11); none without one."""
    if score is None:
        return {}
    return {f"nps:{nps_category(score)}": f"latest NPS answer {score} (promoter 9-10, passive 7-8, detractor 0-6)"}


def _lifecycle_reason(stage: str, order_count: int, days: float | None, t: Thresholds) -> str:
    if days is None:
        return "no order yet"
    last = f"last order {days:.1f} days ago"
    # only the stage's own reason is formatted (once per customer a batch evaluates)
    if stage == "churned":
        return f"{last} (> {t.churned_days:g})"
    if stage == "at_risk":
        return f"{last} (> {t.at_risk_days:g})"
    if stage == "loyal":
        return f"{order_count} orders (>= {t.loyal_orders}), {last}"
    return f"{order_count} order(s), {last}"


async def apply(
    session: AsyncSession, wanted: list[Wanted], families: tuple[str, ...] | None, at: datetime, outbox: Outbox,
    everyone: bool = False, exit_reason: Callable[[str, str, str], str] | None = None,
) -> int:
    """Make memberships within `families` (a family ending in ':' is a prefix, any other an exact
    custom key; None is every segment) match `wanted`; with `everyone`, customers missing from
    `wanted` leave those families. An exit is recorded with `exit_reason(customer, segment,
    reason held)`, by default the reason held. Returns how many memberships changed."""
    current: dict[tuple[str, str], str] = {}
    if everyone:
        current = await _current(session, families, None)
    else:
        for chunk in chunks([w.customer_id for w in wanted]):
            current |= await _current(session, families, chunk)
    target = {(w.customer_id, s): reason for w in wanted for s, reason in w.segments.items()}
    # Rows in one order (customer, segment) in every writer: two that meet wait, not deadlock.
    exits = sorted(key for key in current if key not in target)
    entries = sorted(key for key in target if key not in current)
    await ENDED.run(session, exits)
    await ENTERED.run(session, [(c, s, at, target[(c, s)]) for c, s in entries])
    # the facts a rule reads hold the segments, not their reasons: a rewording changes none
    await mark_facts_changed(session, {c for c, _ in exits} | {c for c, _ in entries})
    # Still a member for new reasons (scores moved, days passed): `why` follows, no history entry.
    await REWORDED.run(session, [(target[(c, s)], c, s) for (c, s), reason in sorted(current.items())
                                 if (c, s) in target and target[(c, s)] != reason])
    left = exit_reason or (lambda _c, _s, held: held)
    changes = [(c, s, "exited", left(c, s, current[(c, s)])) for c, s in exits] + [(c, s, "entered", target[(c, s)]) for c, s in entries]
    if changes:
        await RECORDED.run(session, [(c, s, change, at, reason) for c, s, change, reason in changes])
        iso = at.isoformat()
        for c, s, change, reason in changes:
            outbox.add(changed_record(c, s, change, at, reason, iso))
    return len(changes)


def changed_record(customer: str, segment: str, change: str, at: datetime, reason: str,
                   iso: str | None = None) -> OutgoingRecord:
    """The SegmentChanged record `encode` would write, without building, validating and dumping
    the model (about 4/5 of publishing a change, issue 13); `iso`: `at.isoformat()`, when the
    caller has it. tests/segmentation/test_contract.py holds the two byte for byte the same."""
    iso = iso or at.isoformat()
    # pydantic writes a UTC time with a `Z`, any other offset as isoformat does
    value = orjson.dumps({"customer_id": customer, "segment": segment, "change": change,
                          "at": iso[:-6] + "Z" if iso.endswith("+00:00") else iso, "reason": reason})
    return record(SegmentChanged, customer, stable_id("segment", customer, segment, change, iso), value)  # its dedupe_key


async def _current(
    session: AsyncSession, families: tuple[str, ...] | None, customers: list[str] | None
) -> dict[tuple[str, str], str]:
    query = select(memberships.c.customer_id, memberships.c.segment, memberships.c.reason)
    if families is not None:
        query = query.where(or_(*(memberships.c.segment.startswith(f) if f.endswith(":") else memberships.c.segment == f
                                  for f in families)))
    if customers is not None:
        query = query.where(among(memberships.c.customer_id, customers, session))
    return {(r.customer_id, r.segment): r.reason for r in await session.execute(query)}


async def recompute_population(session: AsyncSession, now: datetime, t: Thresholds, outbox: Outbox) -> int:
    """Value tiers and RFM for every buyer, from one read of the buyers; only the profiles whose
    tier or scores moved are written."""
    buyers = (await session.execute(
        select(profiles.c.customer_id, profiles.c.last_order_at, profiles.c.order_count, profiles.c.revenue,
               profiles.c.value_tier, profiles.c.rfm_r, profiles.c.rfm_f, profiles.c.rfm_m)
        .where(profiles.c.order_count > 0))).all()
    tiers = logic.value_tiers({b.customer_id: b.revenue for b in buyers}, t)
    s = logic.rfm_scores(np.array([days_between(b.last_order_at, now) for b in buyers]),
                         np.array([b.order_count for b in buyers]), np.array([b.revenue for b in buyers]))
    scored = list(zip(buyers, s.r.tolist(), s.f.tolist(), s.m.tolist(), s.labels.tolist(), strict=True))
    moved = [{"cid": b.customer_id, "tier": tiers[b.customer_id], "r": r, "f": f, "m": m, "label": label}
             for b, r, f, m, label in scored if (b.value_tier, b.rfm_r, b.rfm_f, b.rfm_m) != (tiers[b.customer_id], r, f, m)]
    if moved:
        await session.execute(
            update(profiles).where(profiles.c.customer_id == bindparam("cid")).values(
                value_tier=bindparam("tier"), rfm_r=bindparam("r"), rfm_f=bindparam("f"), rfm_m=bindparam("m"),
                rfm_label=bindparam("label")),
            moved)
        await mark_facts_changed(session, [m["cid"] for m in moved])
    n = len(buyers)
    wanted = [
        Wanted(b.customer_id, {
            f"value:{tiers[b.customer_id]}": f"revenue rank among {n} buyers puts it in the {tiers[b.customer_id]} tier",
            f"rfm:{label}": f"r={r} f={f} m={m}",
        })
        for b, r, f, m, label in scored
    ]
    return await apply(session, wanted, POPULATION_FAMILIES, now, outbox, everyone=True)


async def customers_to_reevaluate(session: AsyncSession, last_run: datetime | None, now: datetime, t: Thresholds) -> list[str]:
    """Customers whose time-based segments can have changed since `last_run`: their last order
    crossed the at-risk or churned age, or an order left the frequency window."""
    if last_run is None:
        return list((await session.execute(select(profiles.c.customer_id).where(profiles.c.order_count > 0))).scalars())
    # More than X days since the last order (strict, as the contract says) is last < now - X; it
    # was not so at the previous run when last >= last_run - X.
    crossed = [
        and_(profiles.c.last_order_at >= last_run - timedelta(days=days), profiles.c.last_order_at < now - timedelta(days=days))
        for days in (t.at_risk_days, t.churned_days)
    ]
    window = timedelta(days=t.frequency_window_days)
    by_age = select(profiles.c.customer_id).where(or_(*crossed))
    by_window = select(orders.c.customer_id).where(orders.c.at > last_run - window, orders.c.at <= now - window)
    found = set((await session.execute(by_age)).scalars()) | set((await session.execute(by_window)).scalars())
    return sorted(found)

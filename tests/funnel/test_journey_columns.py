"""The report index's journeys as flat columns (services/funnel/report_index.py) stay equal to the
attempts' journeys as rows are rewritten, removed and compacted, and the per-name counts of
touchpoints agree with counting sets by hand on both of their paths (grid and sort)."""
from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson

from services.funnel.logic import names_seen
from services.funnel.report_index import FunnelIndex, Journeys, spans

NAMES = ["Product Viewed", "Product Added", "Order Completed", "page:Home", "identify"]
TYPES = {"Product Viewed": "track", "Product Added": "track", "Order Completed": "track", "page:Home": "page",
         "identify": "identify"}


def attempt_row(rng: random.Random, customer: str) -> tuple[SimpleNamespace, dict[str, Any] | None]:
    """An attempts row as the store holds it (depth 0: removed) and its journey."""
    depth = rng.choice([0, 1, 2, 3, 3])
    if depth == 0:
        return SimpleNamespace(customer_id=customer, depth=0, times="[]", first_at=0.0, reached_at=0.0, channel="",
                               journey="{}"), None
    t1 = rng.randint(0, 100) * 3600.0
    times = [t1 + k * 7200.0 for k in range(depth)]
    steps = sorted([[t1 + rng.randint(0, 40) * 1800.0, f"{customer}-{rng.random()}", "", name, rng.choice(["email", "ads"])]
                    for name in rng.choices(NAMES, k=rng.randint(0, 8))], key=lambda s: (s[0], s[1]))
    for step in steps:
        step[2] = TYPES[step[3]]
    journey = {"steps": steps, "revenue": [rng.choice([None, 2.5]) for _ in range(depth)]}
    return SimpleNamespace(customer_id=customer, depth=depth, times=orjson.dumps(times).decode(), first_at=t1,
                           reached_at=times[-1], channel="email", journey=orjson.dumps(journey).decode()), journey


def test_columns_follow_rewritten_and_removed_journeys_through_compaction() -> None:
    rng = random.Random(3)
    index = FunnelIndex(3)
    index.journey_columns = Journeys(3, compact_at=0)  # compact as soon as garbage is half the columns
    held: dict[str, dict[str, Any] | None] = {}
    compacted = False
    for round_ in range(12):
        customers = [f"c{n}" for n in rng.sample(range(120), 40 if round_ else 120)]
        rows = []
        for customer in customers:
            row, held[customer] = attempt_row(rng, customer)
            rows.append(row)
        index.apply(rows)
        columns = index.journeys()
        used = len(index.ids)
        live = int(columns.step_count[:used].sum())
        compacted |= columns.step_at.size == live and round_ > 0
        assert columns.step_at.size <= 2 * live + 1
        everyone = np.arange(used)
        row, step, _ = spans(columns.step_start[everyone], columns.step_count[everyone])
        touch_row, touch, _ = spans(columns.touch_start[everyone], columns.touch_count[everyone])
        for i, customer in enumerate(index.ids):
            journey = held[customer]
            steps = journey["steps"] if journey else []
            got = [(at, columns.names.names[c]) for at, c in
                   zip(columns.step_at.values[step[row == i]].tolist(), columns.step_name.values[step[row == i]].tolist(), strict=True)]
            assert got == [(s[0], s[3]) for s in steps], (round_, customer)
            touches = [(at, columns.channels.names[c]) for at, c in
                       zip(columns.touch_at.values[touch[touch_row == i]].tolist(),
                           columns.touch_channel.values[touch[touch_row == i]].tolist(), strict=True)]
            assert touches == [(s[0], s[4]) for s in steps if s[2] in ("page", "track")], (round_, customer)
            revenue = (journey["revenue"] if journey else []) + [None] * 3
            assert [None if math.isnan(v) else v for v in columns.revenue[i].tolist()] == revenue[:3], (round_, customer)
    assert compacted


def test_names_seen_counts_each_customer_once_by_grid_and_by_sort() -> None:
    rng = random.Random(8)
    customers, kinds = 50, 7
    pairs = [(rng.randrange(customers), rng.randrange(kinds)) for _ in range(400)]
    moved = np.array([rng.random() < 0.4 for _ in range(customers)])
    having = [len({c for c, k in pairs if k == kind}) for kind in range(kinds)]
    moving = [len({c for c, k in pairs if k == kind and moved[c]}) for kind in range(kinds)]
    row = np.array([c for c, _ in pairs], dtype=np.int64)
    name = np.array([k for _, k in pairs], dtype=np.int64)
    for cells in (customers * kinds, 0):
        assert names_seen(row, name, moved, kinds, cells) == (having, moving), cells
    empty = np.zeros(0, dtype=np.int64)
    for cells in (customers * kinds, 0):
        assert names_seen(empty, empty, moved, kinds, cells) == ([0] * kinds, [0] * kinds), cells

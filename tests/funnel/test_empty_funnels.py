"""A funnel nobody is in (a fresh install, a new funnel, or every customer erased) answers every
read with zeros and empty pages, never a 500. SQLite and PostgreSQL.

Each test here once found a bug: the report over an empty index was an IndexError (its columns of
stage gaps had no stage columns until a customer arrived)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.funnel.support import Funnels, at, walk

STAGES = ["awareness", "interest", "consideration", "purchase", "loyalty"]
WIDE = {"from": at(-200), "to": at(1)}


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


def empty_report(stages: list[str], **params: str) -> dict[str, Any]:
    """The contract's report over 0 customers: 0 entered, rates and medians null, nothing dropped."""
    return {"funnel": "lifecycle", "from": params["from"], "to": params["to"], "customers": 0,
            "stages": [{"stage": s, "entered": 0, "converted_from_previous_rate": None, "drop_off": 0,
                        "in_progress": 0, "median_seconds_from_previous": None} for s in stages],
            "overall_conversion_rate": None}


async def assert_empty(funnels: Funnels, key: str = "lifecycle", stages: list[str] = STAGES) -> None:
    assert await funnels.report(key, **WIDE) == {**empty_report(stages, **WIDE), "funnel": key}
    with_breakdown = await funnels.report(key, **WIDE, breakdown="channel")
    assert (with_breakdown["customers"], with_breakdown["breakdown"]) == (0, [])
    assert (await funnels.report(key))["customers"] == 0  # the default window too
    for stage in stages:
        assert await funnels.stage(key, stage) == []
        assert await funnels.stage(key, stage, stalled_days=3) == []
    assert await funnels.transitions(key) == []
    assert (await funnels.get(f"/api/funnels/{key}"))["customers"] == dict.fromkeys(stages, 0)


class TestFreshInstall:
    async def test_the_default_funnel_answers_with_zeros(self, funnels: Funnels) -> None:
        await assert_empty(funnels)

    async def test_a_new_funnel_without_events_answers_with_zeros(self, funnels: Funnels) -> None:
        await funnels.create({"key": "trial", "conversion_window_days": 30, "stages": [
            {"key": "visit", "match": {"type": "page"}},
            {"key": "signup", "max_days_from_previous": 2, "match": {"type": "track", "event": "Signed Up"}}]})
        await assert_empty(funnels, "trial", ["visit", "signup"])


class TestEveryoneErased:
    async def test_the_funnel_answers_with_zeros(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", start=-10), *walk("bob", start=-4)[:3])
        assert (await funnels.report("lifecycle", **WIDE))["customers"] == 2  # the report index is warm
        await funnels.erase("ann")
        await funnels.erase("bob")
        await assert_empty(funnels)
        transitions = await funnels.transitions("lifecycle", since=at(-300))
        assert transitions == []

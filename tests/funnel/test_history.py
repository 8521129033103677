"""Every event counts at any age (docs/api.md section 7): customers whose events are two and five years
old, sent shuffled in batches with SDK retries and duplicates, give the reports the brute-force
reference of test_semantics computes from the raw events. With a retention set, a report that
reaches before its horizon says so (`complete_from`) and counts what the service still has.
SQLite and PostgreSQL."""
from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.funnel.logic import LIFECYCLE, Matched
from tests.funnel.support import DAY, T0, Funnels, at, iso, walk
from tests.funnel.test_random import arrive, assert_attempts_are_the_reference, expected, population
from tests.funnel.test_semantics import reference_attempt
from tests.helpers import eventually

TWO_YEARS, FIVE_YEARS = -730.0, -1826.0
HORIZON = iso(T0 - timedelta(days=365))  # with FUNNEL_EVENTS_RETENTION_DAYS=365, the clock at T0

Population = tuple[list[dict[str, Any]], dict[str, list[Matched]], dict[str, str]]


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


def aged(rng: random.Random, size: int, days: float, prefix: str) -> Population:
    """test_random's population (steps over the last 150 days) moved `days` back in time, its
    customers and message ids prefixed so several populations do not meet."""
    messages, matched, channels = population(rng, size)
    moved = [{**m, "userId": prefix + m["userId"], "messageId": prefix + m["messageId"],
              "timestamp": iso(datetime.fromisoformat(m["timestamp"]) + timedelta(days=days))} for m in messages]
    shifted = {prefix + c: [Matched(e.at + days * DAY, prefix + e.event_id, e.stages) for e in events]
               for c, events in matched.items()}
    return moved, shifted, {prefix + c: channel for c, channel in channels.items()}


def history(seed: int) -> Population:
    """Customers two and five years back, and some of the last months."""
    rng = random.Random(seed)
    parts = [aged(rng, 12, FIVE_YEARS, "five-"), aged(rng, 12, TWO_YEARS, "two-"), aged(rng, 8, 0, "now-")]
    return ([m for p in parts for m in p[0]], {c: e for p in parts for c, e in p[1].items()},
            {c: ch for p in parts for c, ch in p[2].items()})


async def send_duplicated(funnels: Funnels, seed: int, messages: list[dict[str, Any]]) -> None:
    """Shuffled in batches with retries (test_random's arrival), then every fifth message again."""
    await arrive(funnels, random.Random(seed), messages)
    await funnels.send(*messages[::5])


RANGES = [(FIVE_YEARS - 200, FIVE_YEARS + 1), (TWO_YEARS - 200, TWO_YEARS + 1), (FIVE_YEARS - 200, 1), (-200, 1)]


class TestEventsOfAnyAge:
    @pytest.mark.parametrize("seed", [3])
    async def test_reports_two_and_five_years_back_match_the_reference(self, funnels: Funnels, seed: int) -> None:
        messages, matched, channels = history(seed)
        await send_duplicated(funnels, seed, messages)
        for start, end in RANGES:
            assert await funnels.report("lifecycle", **{"from": at(start), "to": at(end)}) == \
                expected(matched, channels, start, end, now=0), (start, end)
        got = await funnels.report("lifecycle", breakdown="channel", **{"from": at(FIVE_YEARS - 200), "to": at(1)})
        want = expected(matched, channels, FIVE_YEARS - 200, 1, now=0, breakdown=True)
        assert sorted(got.pop("breakdown"), key=str) == sorted(want.pop("breakdown"), key=str)
        assert got == want

    async def test_each_old_customer_has_the_attempt_and_transitions_the_events_give(self, funnels: Funnels) -> None:
        messages, matched, _ = history(4)
        await send_duplicated(funnels, 4, messages)
        for customer in await assert_attempts_are_the_reference(funnels, matched):
            got = (await funnels.get_customer("lifecycle", customer)).json()
            # Matches only grow, so a customer only moves forward: one transition per stage reached.
            assert [t["to_stage"] for t in got["transitions"]] == [s.key for s in LIFECYCLE.stages[:len(got["attempt"])]]

    async def test_a_funnel_created_after_the_import_counts_the_old_events(self, funnels: Funnels) -> None:
        messages, matched, channels = history(5)
        await send_duplicated(funnels, 5, messages)
        await funnels.create({**LIFECYCLE.to_json(), "key": "again", "name": "Again"})
        for start, end in RANGES:
            got = await funnels.report("again", **{"from": at(start), "to": at(end)})
            assert got == {**expected(matched, channels, start, end, now=0), "funnel": "again"}


class TestFollowUpsOfOldCustomers:
    async def test_a_purchase_five_years_ago_gets_its_follow_up_due_then(self, funnels: Funnels) -> None:
        """The follow-up service takes the funnel's stage changes at their event time, at any age."""
        await funnels.send(*walk("old", FIVE_YEARS)[:4])  # purchase at FIVE_YEARS + 3

        async def satisfaction() -> dict[str, Any] | None:
            found = (await funnels.get("/api/followups", customer_id="old"))["items"]
            return next((f for f in found if f["policy"] == "satisfaction_after_purchase_7d"), None)

        followup = await eventually(satisfaction)
        assert (followup["due_at"], followup["status"]) == (at(FIVE_YEARS + 3 + 7), "overdue")


class TestWithRetention:
    """FUNNEL_EVENTS_RETENTION_DAYS=365: copies of events older than a year are not kept."""

    @pytest.fixture
    def funnel_db_url(self, store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("FUNNEL_EVENTS_RETENTION_DAYS", "365")
        return store_url

    async def test_a_report_before_the_horizon_says_complete_from(self, funnels: Funnels) -> None:
        messages, matched, channels = history(6)
        await send_duplicated(funnels, 6, messages)
        # The existing funnel matched every event as it came, old ones too: complete, and it says
        # where the service's own history starts.
        for start, end in RANGES[:3]:
            got = await funnels.report("lifecycle", **{"from": at(start), "to": at(end)})
            assert got == {**expected(matched, channels, start, end, now=0), "complete_from": HORIZON}
        assert "complete_from" not in await funnels.report("lifecycle", **{"from": at(-200), "to": at(1)})

    async def test_a_funnel_rebuilt_after_the_horizon_counts_what_is_left_and_says_so(self, funnels: Funnels) -> None:
        messages, matched, channels = history(7)
        await send_duplicated(funnels, 7, messages)
        await funnels.update("lifecycle", LIFECYCLE.to_json())  # rebuilt from the copies still held
        horizon = (T0 - timedelta(days=365)).timestamp()
        left = {c: [e for e in events if e.at > horizon] for c, events in matched.items()}
        got = await funnels.report("lifecycle", **{"from": at(FIVE_YEARS - 200), "to": at(1)})
        assert got == {**expected(left, channels, FIVE_YEARS - 200, 1, now=0), "complete_from": HORIZON}
        assert got["customers"] == len([c for c in left if reference_attempt(LIFECYCLE, left[c])])
        assert "complete_from" not in await funnels.report("lifecycle", **{"from": at(-365), "to": at(1)})


def test_the_population_holds_customers_two_and_five_years_back() -> None:
    _, matched, _ = history(3)
    firsts = [min(e.at for e in events) for events in matched.values() if events]
    assert any(t < (T0 + timedelta(days=FIVE_YEARS)).timestamp() for t in firsts)
    assert any((T0 + timedelta(days=TWO_YEARS - 200)).timestamp() < t < (T0 + timedelta(days=TWO_YEARS + 1)).timestamp()
               for t in firsts)

"""Each customer's latest match per funnel and latest event copy, the times every batch compares its
events with: one index lookup per customer (matches by (customer_id, funnel, at)), the same answer
as reading all their rows; and a store with data from before the index upgrades to it. SQLite and
PostgreSQL."""
from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, insert, select
from sqlalchemy.engine import Connection

from services.funnel.app import MIGRATIONS
from services.funnel.store import events, latest_times, matches
from services.funnel.tracking import _latest_events, _latest_matches
from shared.store import Store

T0 = datetime(2024, 3, 1, tzinfo=UTC)
FUNNELS = ("lifecycle", "sales")
BEFORE_INDEX = "funnel_0007"


@pytest.fixture
def store_url_service() -> str | None:
    """Empty stores: each test migrates its own."""
    return None


def _upgrade(conn: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


async def migrated_to(store: Store, revision: str) -> None:
    async with store.engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    yield store
    await store.dispose()


def history(seed: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Event copies and matches in both funnels: one customer with 400 events, a few with some,
    in no order of time; `quiet` matches only in `sales`."""
    rng = random.Random(seed)
    copies, matched = [], []
    counts = {"heavy": 400, "ann": 3, "bob": 1, "quiet": 2}
    for customer, n in counts.items():
        for i in range(n):
            at = T0 + timedelta(seconds=rng.randrange(90 * 86400))
            event_id = f"{customer}-{i}"
            copies.append({"event_id": event_id, "customer_id": customer, "type": "track", "name": "Viewed",
                           "document": b"{}", "channel": "web", "at": at})
            for funnel in FUNNELS:
                if (customer, funnel) != ("quiet", "lifecycle") and rng.random() < 0.7:
                    matched.append({"funnel": funnel, "event_id": event_id, "customer_id": customer,
                                    "at": at.timestamp(), "stages": 1, "channel": "web"})
    return copies, matched


def latest_by_hand(rows: list[dict[str, object]], key: str, funnel: str | None = None) -> dict[str, float]:
    found: dict[str, float] = {}
    for r in rows:
        if funnel is None or r["funnel"] == funnel:
            at = r[key]
            seconds = at.timestamp() if isinstance(at, datetime) else float(at)  # type: ignore[arg-type]
            found[str(r["customer_id"])] = max(found.get(str(r["customer_id"]), seconds), seconds)
    return found


async def stored(store: Store, seed: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    copies, matched = history(seed)
    async with store.transaction() as session:
        await session.execute(insert(events), copies)
        await session.execute(insert(matches), matched)
    return copies, matched


ASKED = ["heavy", "ann", "bob", "quiet", "nobody"]


async def test_the_latest_match_and_event_are_those_of_all_rows(store: Store) -> None:
    await store.migrate(MIGRATIONS)
    copies, matched = await stored(store, 1)
    async with store.read() as session:
        for funnel in FUNNELS:
            assert await _latest_matches(session, funnel, ASKED) == latest_by_hand(matched, "at", funnel)
        assert await _latest_events(session, ASKED) == latest_by_hand(copies, "at")
        assert await latest_times(session, matches.c.at, []) == {}
    assert "quiet" not in latest_by_hand(matched, "at", "lifecycle")  # someone asked about is not there


async def test_a_store_with_matches_upgrades_to_the_lookup_index(store: Store) -> None:
    await migrated_to(store, BEFORE_INDEX)
    copies, matched = await stored(store, 2)
    await store.migrate(MIGRATIONS)

    def indexes(conn: Connection) -> dict[str, list[str | None]]:
        return {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("matches")}

    async with store.engine.connect() as conn:
        assert await conn.run_sync(indexes) == {"ix_matches_customer_funnel_at": ["customer_id", "funnel", "at"]}
    async with store.read() as session:
        assert len((await session.execute(select(matches.c.event_id))).all()) == len(matched)
        assert await _latest_matches(session, "sales", ASKED) == latest_by_hand(matched, "at", "sales")
        assert await _latest_events(session, ASKED) == latest_by_hand(copies, "at")


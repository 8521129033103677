"""Requests that arrive together commit their inbox rows together (one group commit; on SQLite
one statement): each accepted message lands once, each rejected one is quarantined once, whether
its request came alone or beside others, with rejections or without."""
from __future__ import annotations

import asyncio

import pytest

from tests.ingest.support import full_timeline, quarantine, send_batch, track, wait_for_events

CUSTOMERS = ("ann", "bob", "cem")


@pytest.fixture
def ingest_db_url(store_url: str) -> str:
    return store_url


def request_body(n: int) -> list[dict[str, object]]:
    """Request n: five messages for one customer; every fourth request also an invalid one."""
    body: list[dict[str, object]] = [track(f"r{n}-m{i}", userId=CUSTOMERS[n % 3]) for i in range(5)]
    if n % 4 == 0:
        body.append(track(f"r{n}-bad", event="Order Completed"))  # no userId nor anonymousId
    return body


class TestConcurrentRequests:
    async def test_every_accepted_message_lands_once_and_every_rejected_one_is_quarantined(self, client):
        bodies = [request_body(n) for n in range(24)]
        answers = await asyncio.gather(*(send_batch(client, body) for body in bodies))
        retried = await asyncio.gather(*(send_batch(client, body) for body in bodies[:6]))  # SDK retries

        assert [a["accepted"] for a in answers] == [5] * 24
        assert [len(a["rejected"]) for a in answers] == [1 if n % 4 == 0 else 0 for n in range(24)]
        assert [a["accepted"] for a in retried] == [5] * 6
        for c, customer in enumerate(CUSTOMERS):
            expected = sorted(f"r{n}-m{i}" for n in range(c, 24, 3) for i in range(5))
            await wait_for_events(client, customer, *expected)
            assert sorted(item["event_id"] for item in await full_timeline(client, customer)) == expected
        bad = [f"r{n}-bad" for n in range(24) if n % 4 == 0]
        assert sorted(item["message_id"] for item in await quarantine(client)) == sorted(bad + bad[:2])

"""The scheduler across restarts: the service stopped and started again on the same store and bus
neither misses nor repeats a reminder (webhook deliveries and followups.v1 events), passes run by
hand and by the service's own periodic jobs. SQLite and PostgreSQL."""
from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from shared.clock import FixedClock
from tests.followup.conftest import new_gateway, webhook_env
from tests.followup.support import Followups, Receiver
from tests.helpers import eventually, running


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


@pytest.fixture
def followup_env(receiver: Receiver) -> dict[str, str]:
    return webhook_env(receiver.url)


def reminders(receiver: Receiver) -> Counter[tuple[str, str]]:
    """(customer, event) of every POST the receiver got, counted."""
    bodies = [orjson.loads(d.body) for d in receiver.received]
    return Counter((b["followup"]["customer_id"], b["event"]) for b in bodies)


async def moves(fu: Followups) -> Counter[tuple[str, str]]:
    return Counter((e["customer_id"], e["change"]) for e in await fu.events() if e["change"] in ("due", "overdue"))


class TestRestartBetweenPasses:
    async def test_reminders_queued_before_a_restart_are_sent_after_it_and_none_twice(
        self, gateway_app: FastAPI, clock: FixedClock, receiver: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        async with running(gateway_app) as client:
            fu = Followups(gateway_app, client, clock)
            await fu.entered("ann", "lifecycle:new")  # due day 1
            await fu.entered("bob", "lifecycle:churned")  # due day 2
            assert await fu.advance(days=1) == 1  # ann due; its reminder queued, not sent yet
        assert receiver.received == []

        again = new_gateway(clock)
        async with running(again) as client:
            fu = Followups(again, client, clock)
            assert await fu.sweep() == 0  # recorded before the restart: not moved again
            assert await fu.send(webhook_client) == 1
            assert await fu.advance(days=1) == 2  # ann overdue, bob due
            assert await fu.send(webhook_client) == 2

        third = new_gateway(clock)
        async with running(third) as client:
            fu = Followups(third, client, clock)
            assert await fu.send(webhook_client) == 0
            assert await fu.advance(days=1) == 1  # bob overdue
            assert await fu.send(webhook_client) == 1
            for _ in range(3):
                await fu.advance(days=1)
                assert await fu.send(webhook_client) == 0
            expected = Counter({("ann", "due"): 1, ("ann", "overdue"): 1, ("bob", "due"): 1, ("bob", "overdue"): 1})
            assert await moves(fu) == expected
        assert reminders(receiver) == Counter({(c, f"followup.{e}"): n for (c, e), n in expected.items()})
        assert len({d.headers["x-funnelstream-delivery"] for d in receiver.received}) == 4


class TestPeriodicJobsAcrossARestart:
    @pytest.fixture
    def followup_env(self, receiver: Receiver) -> dict[str, str]:
        return {**webhook_env(receiver.url), "FOLLOWUP_SCHEDULER_SECONDS": "0.05"}

    @pytest.fixture
    def background_webhooks(self) -> bool:
        return True

    async def test_many_passes_and_a_restart_send_each_reminder_once(
        self, gateway_app: FastAPI, clock: FixedClock, receiver: Receiver
    ) -> None:
        async def got(*wanted: tuple[str, str]) -> bool:
            return all(reminders(receiver)[w] for w in wanted)

        async with running(gateway_app) as client:
            fu = Followups(gateway_app, client, clock)
            await fu.entered("ann", "lifecycle:new")  # due day 1
            await fu.entered("bob", "lifecycle:churned", days=0.5)  # due day 2.5
            clock.advance(days=1)
            await eventually(lambda: got(("ann", "followup.due")))
            clock.advance(days=1.5)  # passes went on: bob due, ann overdue
            await eventually(lambda: got(("ann", "followup.overdue"), ("bob", "followup.due")))

        restarted = new_gateway(clock)
        async with running(restarted) as client:
            fu = Followups(restarted, client, clock)
            await fu.entered("cy", "lifecycle:new", days=2.5)  # due day 3.5
            clock.advance(days=1)
            await eventually(lambda: got(("bob", "followup.overdue"), ("cy", "followup.due")))
            found: dict[str, Any] = {f["customer_id"]: f["status"] for f in await fu.list()}
            assert found == {"ann": "overdue", "bob": "overdue", "cy": "due"}
            assert await moves(fu) == Counter({("ann", "due"): 1, ("ann", "overdue"): 1, ("bob", "due"): 1,
                                               ("bob", "overdue"): 1, ("cy", "due"): 1})
        assert reminders(receiver) == Counter({("ann", "followup.due"): 1, ("ann", "followup.overdue"): 1,
                                               ("bob", "followup.due"): 1, ("bob", "followup.overdue"): 1,
                                               ("cy", "followup.due"): 1})

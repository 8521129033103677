"""The default policy detractor_callback_24h (docs/api.md sections 5 and 11), the whole path: real
survey answers through ingest and segmentation (nps:detractor) to a phone follow-up due within
24 h, cancelled when the customer's next answer is not a detractor's. SQLite and PostgreSQL."""
from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from tests.followup.support import Followups, iso
from tests.followup.test_customers import through_the_services
from tests.segmentation.support import survey


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


def callbacks(found: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(f["status"], f["due_at"], f["reason"]) for f in sorted(found, key=lambda f: f["created_at"])
            if f["policy"] == "detractor_callback_24h"]


class TestDetractorCallback:
    async def test_a_detractor_gets_a_call_that_a_better_next_answer_cancels(self, fu: Followups, gateway_app: FastAPI) -> None:
        await through_the_services(fu, gateway_app, survey("n1", "ann", "nps", 3), survey("p1", "pia", "nps", 9))
        [call] = [f for f in await fu.of("ann") if f["policy"] == "detractor_callback_24h"]
        assert (call["channel"], call["priority"], call["status"], call["due_at"]) == ("phone", "high", "pending", iso(1))
        assert call["reason"].startswith("entered nps:detractor: latest NPS answer 3")
        assert await fu.of("pia") == []  # a promoter is not called

        fu.clock.advance(hours=2)
        await through_the_services(fu, gateway_app, survey("n0", "ann", "nps", 10, days=-5),  # late and older: no change
                                   survey("n2", "ann", "nps", 5, days=1 / 24))  # still a detractor: the same call
        assert callbacks(await fu.of("ann")) == [("pending", iso(1), call["reason"])]

        fu.clock.advance(hours=4)
        await through_the_services(fu, gateway_app, survey("n3", "ann", "nps", 8, days=0.25))
        [cancelled] = callbacks(await fu.of("ann"))
        assert cancelled[0] == "cancelled" and "left nps:detractor" in cancelled[2], cancelled

        fu.clock.advance(hours=18)  # a new detractor answer: a new call, due a day after it
        await through_the_services(fu, gateway_app, survey("n4", "ann", "nps", 0, days=1))
        assert [c[:2] for c in callbacks(await fu.of("ann"))] == [("cancelled", iso(1)), ("pending", iso(2))]

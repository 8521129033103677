"""Alerts (docs/api.md section 9) by a moving clock: four steady weeks, then a week whose
conversion falls by half; the alert fires exactly once (a firing, an event on alerts.v1 and a
webhook signed with the shared secret to a real local HTTP receiver). SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from services.funnel.jobs import run_alerts
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.events import ALERTS
from tests.followup.support import SECRET, Receiver
from tests.funnel.support import Funnels, iso
from tests.helpers import ADMIN, READER, eventually, read_topic

WEEKS = [datetime(2024, 1, 29, tzinfo=UTC) + timedelta(weeks=i) for i in range(5)]  # Mondays; T0 is Fri 1 March
ALERT = {"key": "signups-fall", "funnel": "lifecycle", "stage": "interest", "interval": "week", "drop_pct": 40,
         "min_entered": 10}


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def gateway_app(data_dir: Path, funnel_db_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv("FUNNEL_DATABASE_URL", funnel_db_url)
    monkeypatch.setenv("SEGMENTATION_REEVALUATE_SECONDS", "86400")
    monkeypatch.setenv("FUNNEL_CLEANUP_SECONDS", "86400")
    monkeypatch.setenv("FUNNEL_ALERTS_SECONDS", "86400")  # checked when the test says, by its clock
    monkeypatch.setenv("FUNNEL_ALERT_WEBHOOK_URLS", receiver.url)
    monkeypatch.setenv("FUNNEL_ALERT_WEBHOOK_SECRET", SECRET)
    return create_app(GatewaySettings())


def week(start: datetime, converting: int, tag: str) -> list[dict[str, Any]]:
    """20 visitors in the week (a page: awareness); `converting` of them sign up (interest) an hour later."""
    messages = []
    for n in range(20):
        seen = start + timedelta(days=n % 4, hours=1 + n)
        user = f"{tag}-{n}"
        messages.append({"type": "page", "name": "Home", "messageId": f"{user}-p", "userId": user, "timestamp": iso(seen)})
        if n < converting:
            messages.append({"type": "track", "event": "Signed Up", "messageId": f"{user}-s", "userId": user,
                             "timestamp": iso(seen + timedelta(hours=1))})
    return messages


async def alert_events(funnels: Funnels) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await read_topic(funnels.runtime.bus, ALERTS)]


async def test_a_week_whose_conversion_halves_fires_once_with_a_signed_webhook(funnels: Funnels, receiver: Receiver,
                                                                               gateway_app: FastAPI) -> None:
    settings = gateway_app.state.upstreams["funnel"].app.state.settings

    async def check(funnels: Funnels) -> int:
        fired = await run_alerts(funnels.runtime, settings)
        await funnels.settle()
        return fired

    created = await funnels.client.post("/api/alerts", json=ALERT, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json() == ALERT
    for i, start in enumerate(WEEKS):
        await funnels.send(*week(start, 10 if i < 4 else 5, f"w{i}"))
    # Fri 1 March: the last complete week is the fourth steady one (rate 0.5 against 0.5): nothing
    assert await check(funnels) == 0
    funnels.clock.advance(days=3, hours=1)  # Mon 4 March 01:00: the week of 26 February is complete
    assert await check(funnels) == 1
    assert await check(funnels) == 0  # once per interval
    funnels.clock.advance(days=3)
    assert await check(funnels) == 0  # later in the same interval
    funnels.clock.advance(days=4)  # the next week had no customer: nothing to compare
    assert await check(funnels) == 0

    # by hand: 5 of 20 signed up in the week of 26 February, 10 of 20 in each of the 4 before
    expected = {"alert": "signups-fall", "funnel": "lifecycle", "stage": "interest", "interval": "week",
                "period_start": iso(WEEKS[4]), "rate": 0.25, "baseline": 0.5, "drop_pct": 50.0, "entered_previous": 20,
                "fired_at": iso(WEEKS[4] + timedelta(days=7, hours=1))}
    firings = await funnels.get("/api/alerts/signups-fall/firings")
    assert firings == {"items": [expected], "next_cursor": None}
    events = await alert_events(funnels)
    assert [{k: e[k] for k in expected} for e in events] == [expected]

    async def delivered() -> bool:
        return len(receiver.received) >= 1

    await eventually(delivered)
    [delivery] = receiver.received
    signature = "sha256=" + hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["x-funnelstream-signature"] == signature
    assert delivery.headers["x-funnelstream-event"] == "alert.fired"
    assert orjson.loads(delivery.body) == expected


BAD = [({"key": "bad key!"}, "key"), ({"funnel": "nope"}, "funnel"), ({"stage": "awareness"}, "stage"),
       ({"stage": "nope"}, "stage"), ({"interval": "month"}, "interval"), ({"drop_pct": 0}, "drop_pct"),
       ({"drop_pct": "half"}, "drop_pct"), ({"min_entered": -1}, "min_entered"), ({"extra": 1}, "extra")]


async def test_alerts_are_checked_listed_refused_twice_and_deleted(funnels: Funnels) -> None:
    for change, loc in BAD:
        response = await funnels.client.post("/api/alerts", json={**ALERT, **change}, headers=ADMIN)
        assert response.status_code == 422, response.text
        assert [d["loc"] for d in response.json()["error"]["details"]] == [loc]
    assert (await funnels.client.post("/api/alerts", json=ALERT, headers=READER)).status_code == 403
    assert (await funnels.client.post("/api/alerts", json=ALERT, headers=ADMIN)).status_code == 201
    assert (await funnels.client.post("/api/alerts", json=ALERT, headers=ADMIN)).status_code == 409
    assert await funnels.get("/api/alerts") == {"items": [ALERT], "next_cursor": None}
    assert await funnels.get("/api/alerts/signups-fall") == ALERT
    assert (await funnels.client.delete("/api/alerts/signups-fall", headers=ADMIN)).status_code == 204
    for path in ("/api/alerts/signups-fall", "/api/alerts/signups-fall/firings"):
        assert (await funnels.client.get(path, headers=READER)).status_code == 404
    assert (await funnels.client.delete("/api/alerts/signups-fall", headers=ADMIN)).status_code == 404

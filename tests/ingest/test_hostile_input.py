"""Input a client may send by mistake or on purpose must never stall ingest nor be a 500.

Each test here once found a bug: a NUL in an id (PostgreSQL refuses it in text columns) stalled
the pipeline; forged cursors were 500s."""
from __future__ import annotations

import base64

import orjson
import pytest

from tests.helpers import READER, eventually
from tests.ingest.support import (
    assert_error,
    full_timeline,
    send,
    send_batch,
    timeline_page,
    track,
    wait_for_events,
)


@pytest.fixture
def ingest_db_url(store_url: str) -> str:
    return store_url


def cursor_of(*values: object) -> str:
    """A well-formed cursor holding values this API never gives out."""
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


class TestNulCharacters:
    async def test_a_nul_in_an_id_does_not_hold_up_everyone_elses_events(self, client):
        await send_batch(client, [track("nul-1", userId="evil\u0000id")])
        await send_batch(client, [track("after-nul", userId="u-after")])

        async def landed() -> bool:
            return [i["event_id"] for i in await full_timeline(client, "u-after")] == ["after-nul"]

        await eventually(landed, timeout=2)

    async def test_a_nul_in_a_rejected_messages_id_is_still_quarantined(self, client):
        response = await send(client, "/v1/batch", {"batch": [{"type": "track", "messageId": "q\u0000", "userId": "u"}]})
        assert response.status_code == 200 and len(response.json()["rejected"]) == 1


class TestForgedCursors:
    @pytest.fixture
    def ingest_db_url(self) -> None:
        return None  # parsing, not SQL: SQLite is enough

    async def test_a_quarantine_cursor_it_never_gave_out_is_a_400(self, client):
        response = await client.get("/api/ingest/quarantine", params={"cursor": cursor_of("abc")}, headers=READER)
        assert_error(response, 400, "invalid_cursor")

    async def test_a_timeline_cursor_with_a_forged_id_is_a_400(self, client):
        await send_batch(client, [track("fc-1", userId="u-fc")])
        await wait_for_events(client, "u-fc", "fc-1")
        response = await timeline_page(client, "u-fc", cursor=cursor_of("2024-01-01T00:00:00+00:00", {"a": 1}))
        assert_error(response, 400, "invalid_cursor")

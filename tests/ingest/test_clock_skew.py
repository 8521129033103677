"""When things happened, whatever the device's clock says: `timestamp` moved by receivedAt - sentAt
(as Segment does). The ingest clock is fixed, so receivedAt is exact."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.clock import FixedClock
from tests.ingest.support import send_batch, send_ok, track, wait_for_events

RECEIVED = datetime(2024, 7, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fixed_clock(ingest) -> FixedClock:
    ingest.clock = FixedClock(RECEIVED)
    return ingest.clock


class TestClockSkew:
    async def test_a_device_an_hour_ahead_is_corrected_by_received_at_minus_sent_at(self, client):
        # The device's clock is an hour ahead; by it, the click was 10 minutes before sending.
        await send_ok(client, "/v1/track", {"messageId": "sk-1", "userId": "u-skew", "event": "Clicked",
                                            "timestamp": "2024-07-01T12:50:00Z", "sentAt": "2024-07-01T13:00:00Z"})
        [item] = await wait_for_events(client, "u-skew", "sk-1")
        assert item["occurred_at"] == "2024-07-01T11:50:00Z"
        assert item["received_at"] == "2024-07-01T12:00:00Z"

    async def test_offsets_in_timestamp_and_sent_at_are_honoured(self, client):
        await send_batch(client, [track("sk-tz", userId="u-skew-tz", timestamp="2024-07-01T14:50:00+02:00",
                                        sentAt="2024-07-01T09:00:00-04:00")])
        [item] = await wait_for_events(client, "u-skew-tz", "sk-tz")
        assert item["occurred_at"] == "2024-07-01T11:50:00Z"

    async def test_the_batch_sent_at_applies_to_messages_without_their_own(self, client):
        await send_batch(client, [track("bs-1", userId="u-bs", timestamp="2024-07-01T12:55:00Z"),
                                  track("bs-2", userId="u-bs", timestamp="2024-07-01T12:55:00Z",
                                        sentAt="2024-07-01T12:00:00Z")],
                         sentAt="2024-07-01T13:00:00Z")
        items = {i["event_id"]: i for i in await wait_for_events(client, "u-bs", "bs-1", "bs-2")}
        assert items["bs-1"]["occurred_at"] == "2024-07-01T11:55:00Z"  # by the batch's sentAt
        assert items["bs-2"]["occurred_at"] == "2024-07-01T12:55:00Z"  # its own sentAt: no skew

    async def test_a_message_without_timestamp_happened_when_received(self, client):
        await send_batch(client, [track("nt-1", userId="u-nt")], sentAt="2024-07-01T15:00:00Z")
        [item] = await wait_for_events(client, "u-nt", "nt-1")
        assert item["occurred_at"] == item["received_at"] == "2024-07-01T12:00:00Z"

    async def test_a_timestamp_without_sent_at_is_taken_as_is(self, client):
        await send_batch(client, [track("ts-1", userId="u-ts", timestamp="2023-12-24T18:30:00Z")])
        [item] = await wait_for_events(client, "u-ts", "ts-1")
        assert item["occurred_at"] == "2023-12-24T18:30:00Z" and item["received_at"] == "2024-07-01T12:00:00Z"

    async def test_a_timestamp_without_a_zone_is_read_as_utc(self, client):
        await send_batch(client, [track("nz-1", userId="u-nz", timestamp="2024-07-01T10:00:00")])
        [item] = await wait_for_events(client, "u-nz", "nz-1")
        assert item["occurred_at"] == "2024-07-01T10:00:00Z"

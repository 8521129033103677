"""What ingest refuses, and how: message and request size limits, gzip (and gzip bombs), bodies
that are not JSON or not a batch, write keys, encodings. Refused requests leave nothing behind."""
from __future__ import annotations

import gzip
import time
import zlib

import orjson
import pytest

from tests.ingest.support import (
    WRITE_KEY,
    assert_error,
    basic,
    full_timeline,
    quarantine,
    send,
    send_batch,
    timeline_page,
    track,
    wait_for_events,
)

KB = 1024


def padded(message_id: str, user: str, size: int) -> dict:
    """A valid track message of about `size` bytes as JSON."""
    message = track(message_id, userId=user, properties={"blob": ""})
    message["properties"]["blob"] = "x" * (size - len(orjson.dumps(message)))
    assert len(orjson.dumps(message)) == size
    return message


def gzip_bomb(inflated_mb: int) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [deflate.compress(b'{"batch": [{"type": "track", "userId": "u-bomb", "event": "')]
    parts += [deflate.compress(b"A" * (1024 * KB)) for _ in range(inflated_mb)]
    parts += [deflate.compress(b'"}]}'), deflate.flush()]
    return b"".join(parts)


async def post_raw(client, body: bytes, **headers: str):
    return await client.post("/v1/batch", content=body,
                             headers={**basic(WRITE_KEY), "Content-Type": "application/json", **headers})


async def nothing_stored_for(client, customer_id: str) -> bool:
    """After a marker sent later has landed (the pipeline keeps order), the customer has no events."""
    await send_batch(client, [track(f"marker-{customer_id}", userId="marker")])
    await wait_for_events(client, "marker", f"marker-{customer_id}")
    return await full_timeline(client, customer_id) == []


class TestMessageSizeLimit:
    async def test_a_message_over_32_kb_is_rejected_and_quarantined_while_the_rest_is_accepted(self, client):
        big = padded("big-1", "u-size", 32 * KB + 1)
        answer = await send_batch(client, [track("small-1", userId="u-size"), big])
        assert answer["accepted"] == 1
        [rejected] = answer["rejected"]
        assert rejected["index"] == 1 and rejected["messageId"] == "big-1"
        assert "32768" in rejected["reason"]
        [kept] = await quarantine(client)
        assert kept["message"] == big and kept["reason"] == rejected["reason"]
        assert [i["event_id"] for i in await wait_for_events(client, "u-size", "small-1")] == ["small-1"]

    async def test_a_message_of_exactly_32_kb_is_accepted(self, client):
        answer = await send_batch(client, [padded("edge-1", "u-edge", 32 * KB)])
        assert answer == {"success": True, "accepted": 1, "rejected": []}


class TestRequestSizeLimit:
    async def test_a_request_over_500_kb_is_a_413_and_nothing_is_kept(self, client):
        batch = [padded(f"part-{n}", "u-huge", 30 * KB) for n in range(18)]  # each message alone is fine
        body = orjson.dumps({"batch": batch})
        assert len(body) > 500 * KB
        assert_error(await post_raw(client, body), 413, "payload_too_large")
        assert await nothing_stored_for(client, "u-huge")
        assert await quarantine(client) == []

    async def test_a_request_just_under_500_kb_is_accepted(self, client):
        batch = [padded(f"part-{n}", "u-big", 30 * KB) for n in range(16)]
        assert len(orjson.dumps({"batch": batch})) < 500 * KB
        assert (await send_batch(client, batch))["accepted"] == 16


class TestGzip:
    async def test_a_gzip_body_is_accepted(self, client):
        body = gzip.compress(orjson.dumps({"batch": [track("gz-1", userId="u-gzip"), track("gz-2", userId="u-gzip")]}))
        response = await post_raw(client, body, **{"Content-Encoding": "gzip"})
        assert response.status_code == 200 and response.json()["accepted"] == 2
        await wait_for_events(client, "u-gzip", "gz-1", "gz-2")

    async def test_a_gzip_body_that_inflates_over_500_kb_is_a_413(self, client):
        batch = [padded(f"zip-{n}", "u-zip", 30 * KB) for n in range(18)]
        body = gzip.compress(orjson.dumps({"batch": batch}))
        assert len(body) < 500 * KB
        assert_error(await post_raw(client, body, **{"Content-Encoding": "gzip"}), 413, "payload_too_large")
        assert await nothing_stored_for(client, "u-zip")

    async def test_a_gzip_bomb_is_stopped_at_the_limit(self, client):
        bomb = gzip_bomb(inflated_mb=64)  # about 64 KB sent
        started = time.monotonic()
        response = await post_raw(client, bomb, **{"Content-Encoding": "gzip"})
        assert_error(response, 413, "payload_too_large")
        assert time.monotonic() - started < 2  # it did not inflate 64 MB to find out

    async def test_a_body_that_says_gzip_but_is_not_is_a_400(self, client):
        assert_error(await post_raw(client, b'{"batch": []}', **{"Content-Encoding": "gzip"}), 400, "invalid_gzip")

    async def test_an_unsupported_content_encoding_is_a_415(self, client):
        assert_error(await post_raw(client, b"\x1b\x00", **{"Content-Encoding": "br"}), 415, "unsupported_media_type")


class TestMalformedRequests:
    @pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b'{"batch": [}'])
    async def test_a_body_that_is_not_json_is_a_400(self, client, body):
        assert_error(await post_raw(client, body), 400, "invalid_json")

    @pytest.mark.parametrize("body", [{}, {"batch": "track"}, {"batch": {"type": "track"}}, [track("a", userId="u")]])
    async def test_a_batch_without_a_batch_array_is_a_422(self, client, body):
        response = await send(client, "/v1/batch", body)
        assert_error(response, 422, "invalid_fields")
        assert "batch" in response.json()["error"]["message"]

    async def test_an_empty_batch_accepts_nothing(self, client):
        assert await send_batch(client, []) == {"success": True, "accepted": 0, "rejected": []}


class TestWriteKeys:
    async def test_no_write_key_is_a_401(self, client):
        response = await client.post("/v1/batch", json={"batch": [track("nk-1", userId="u-nokey")]})
        assert_error(response, 401, "missing_write_key")
        assert await nothing_stored_for(client, "u-nokey")

    async def test_a_wrong_key_by_basic_auth_is_a_401(self, client):
        assert_error(await send(client, "/v1/batch", {"batch": [track("wk-1", userId="u-wrong")]}, key="nope"),
                     401, "invalid_write_key")
        assert await nothing_stored_for(client, "u-wrong")

    async def test_basic_credentials_that_are_not_base64_are_a_401(self, client):
        response = await client.post("/v1/batch", json={"batch": []}, headers={"Authorization": "Basic %%%"})
        assert_error(response, 401, "invalid_write_key")

    async def test_the_write_key_in_the_body_is_accepted(self, client):
        body = {"batch": [track("bk-1", userId="u-bodykey")], "writeKey": WRITE_KEY}
        response = await client.post("/v1/batch", json=body)
        assert response.status_code == 200 and response.json()["accepted"] == 1
        single = await client.post("/v1/track", json={"userId": "u-bodykey", "event": "E", "messageId": "bk-2",
                                                      "writeKey": WRITE_KEY})
        assert single.status_code == 200 and single.json()["accepted"] == 1
        items = await wait_for_events(client, "u-bodykey", "bk-1", "bk-2")
        assert all("extra" not in item for item in items)  # the key is not kept as an unknown field

    async def test_a_wrong_write_key_in_the_body_is_a_401(self, client):
        response = await client.post("/v1/batch", json={"batch": [track("bw-1", userId="u-bodywrong")],
                                                        "writeKey": "nope"})
        assert_error(response, 401, "invalid_write_key")

    async def test_an_api_key_is_not_a_write_key(self, client):
        response = await client.post("/v1/batch", json={"batch": []}, headers={"Authorization": "Bearer dev-admin-key"})
        assert_error(response, 401, "missing_write_key")

    async def test_a_refused_request_is_refused_before_its_messages_are_judged(self, client):
        response = await send(client, "/v1/batch", {"batch": [{"bad": True}]}, key="nope")
        assert_error(response, 401, "invalid_write_key")
        assert await quarantine(client) == []
        assert (await timeline_page(client, "anyone")).status_code == 404

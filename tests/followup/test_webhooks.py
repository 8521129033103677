"""Webhook reminders against a real HTTP receiver on 127.0.0.1: the signed POST, the delivery id
receivers dedupe on, retries with growing gaps by the moved clock, a receiver that is down, giving
up, the service's own sender, and settings that refuse to start without a secret."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import ValidationError

from shared.settings import SettingsError

from services.followup.settings import FollowupSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.followup.conftest import webhook_env
from tests.followup.support import SECRET, Followups, Receiver, at, iso
from tests.helpers import eventually, free_port, start_process, stop_process

NO_SECRET = "FOLLOWUP_WEBHOOK_URLS is set but FOLLOWUP_WEBHOOK_SECRET is empty"


@pytest.fixture
def followup_env(receiver: Receiver) -> dict[str, str]:
    return webhook_env(receiver.url)


async def due_welcome(fu: Followups) -> str:
    """ann's welcome follow-up, made at T0 and recorded as due at day 1; returns its id."""
    await fu.entered("ann", "lifecycle:new")
    assert await fu.advance(days=1) == 1
    return str((await fu.only("ann"))["id"])


class TestTheSignedPost:
    async def test_the_body_and_its_hmac_sha256_signature(
        self, fu: Followups, receiver: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        followup_id = await due_welcome(fu)
        assert await fu.send(webhook_client) == 1
        [delivery] = receiver.received
        expected = hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
        assert delivery.headers["x-funnelstream-signature"] == f"sha256={expected}"
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.headers["x-funnelstream-event"] == "followup.due"
        [row] = await fu.deliveries()
        assert delivery.headers["x-funnelstream-delivery"] == row.id
        assert orjson.loads(delivery.body) == {"event": "followup.due", "followup": await fu.get(followup_id)}
        assert (row.attempts, row.delivered_at, row.next_attempt_at, row.last_error) == (1, at(1), None, None)

    async def test_due_and_overdue_are_two_deliveries_with_their_own_ids(
        self, fu: Followups, receiver: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        await due_welcome(fu)
        await fu.send(webhook_client)
        await fu.advance(days=1)
        assert await fu.send(webhook_client) == 1
        events = [orjson.loads(d.body)["event"] for d in receiver.received]
        assert events == ["followup.due", "followup.overdue"]
        assert orjson.loads(receiver.received[1].body)["followup"]["status"] == "overdue"
        assert len({d.headers["x-funnelstream-delivery"] for d in receiver.received}) == 2

    async def test_a_snoozed_follow_up_that_falls_due_again_is_reminded_again(
        self, fu: Followups, receiver: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        followup_id = await due_welcome(fu)
        await fu.send(webhook_client)
        await fu.ok(followup_id, "snooze", {"until": iso(3)})
        await fu.advance(days=2)
        await fu.send(webhook_client)
        assert [orjson.loads(d.body)["event"] for d in receiver.received] == ["followup.due", "followup.due"]


class TestTwoReceivers:
    @pytest.fixture
    def other(self) -> Iterator[Receiver]:
        started = Receiver().start()
        yield started
        started.stop()

    @pytest.fixture
    def followup_env(self, receiver: Receiver, other: Receiver) -> dict[str, str]:
        return webhook_env(receiver.url, other.url)

    async def test_each_url_gets_its_own_signed_delivery(
        self, fu: Followups, receiver: Receiver, other: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        await due_welcome(fu)
        assert await fu.send(webhook_client) == 2
        [first], [second] = receiver.received, other.received
        assert first.body == second.body
        assert first.headers["x-funnelstream-signature"] == second.headers["x-funnelstream-signature"]
        assert first.headers["x-funnelstream-delivery"] != second.headers["x-funnelstream-delivery"]


class TestRetries:
    async def test_500_twice_then_200_is_three_attempts_with_growing_gaps(
        self, fu: Followups, receiver: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        receiver.answers = [500, 500]
        await due_welcome(fu)
        attempts_at = []
        for step in [0, 0, 1.999, 0.001, 3.999, 0.001, 100, 1000]:  # seconds the clock moves before a pass
            fu.clock.advance(seconds=step)
            before = len(receiver.received)
            await fu.send(webhook_client)
            attempts_at += [(fu.clock.now() - at(1)).total_seconds()] * (len(receiver.received) - before)
        assert attempts_at == [0, 2, 6]  # gaps of 2 s, then 4 s
        assert len({d.headers["x-funnelstream-delivery"] for d in receiver.received}) == 1
        assert len({(d.body, d.headers["x-funnelstream-signature"]) for d in receiver.received}) == 1
        [row] = await fu.deliveries()
        assert (row.attempts, row.delivered_at, row.next_attempt_at, row.last_error) == (3, at(1, seconds=6), None, None)

    async def test_a_failed_attempt_is_recorded_with_its_error(
        self, fu: Followups, receiver: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        receiver.answers = [503]
        await due_welcome(fu)
        assert await fu.send(webhook_client) == 0
        [row] = await fu.deliveries()
        assert (row.attempts, row.delivered_at, row.next_attempt_at, row.last_error) == (
            1, None, at(1, seconds=2), "HTTP 503: ok")


class TestGivingUp:
    @pytest.fixture
    def followup_env(self, receiver: Receiver) -> dict[str, str]:
        return {**webhook_env(receiver.url), "FOLLOWUP_WEBHOOK_MAX_ATTEMPTS": "3"}

    async def test_after_the_last_attempt_nothing_more_is_sent(
        self, fu: Followups, receiver: Receiver, webhook_client: httpx.AsyncClient
    ) -> None:
        receiver.answers = [500] * 10
        await due_welcome(fu)
        for _ in range(6):
            await fu.send(webhook_client)
            fu.clock.advance(hours=1)
        assert len(receiver.received) == 3
        [row] = await fu.deliveries()
        assert (row.attempts, row.delivered_at, row.next_attempt_at) == (3, None, None)


class TestReceiverDown:
    @pytest.fixture
    def down_port(self) -> int:
        return free_port()

    @pytest.fixture
    def followup_env(self, down_port: int) -> dict[str, str]:
        return webhook_env(f"http://127.0.0.1:{down_port}/hooks")

    async def test_the_delivery_stays_pending_until_the_receiver_is_back(
        self, fu: Followups, down_port: int, webhook_client: httpx.AsyncClient
    ) -> None:
        await due_welcome(fu)
        assert await fu.send(webhook_client) == 0
        [row] = await fu.deliveries()
        assert (row.attempts, row.delivered_at, row.next_attempt_at) == (1, None, at(1, seconds=2))
        assert row.last_error.startswith("ConnectError")
        back = Receiver(port=down_port).start()
        try:
            fu.clock.advance(seconds=2)
            assert await fu.send(webhook_client) == 1
            assert [orjson.loads(d.body)["event"] for d in back.received] == ["followup.due"]
            assert back.received[0].headers["x-funnelstream-delivery"] == row.id
        finally:
            back.stop()


class TestTheServiceSendsOnItsOwn:
    @pytest.fixture
    def background_webhooks(self) -> bool:
        return True

    async def test_the_running_service_posts_the_reminder(self, fu: Followups, receiver: Receiver) -> None:
        await due_welcome(fu)

        async def posted() -> bool:
            return len(receiver.received) == 1

        await eventually(posted)
        assert orjson.loads(receiver.received[0].body)["event"] == "followup.due"


class TestWithoutUrls:
    @pytest.fixture
    def followup_env(self) -> dict[str, str]:
        return {}

    async def test_no_url_no_delivery(self, fu: Followups, webhook_client: httpx.AsyncClient) -> None:
        await due_welcome(fu)
        assert await fu.deliveries() == []
        assert await fu.send(webhook_client) == 0


class TestUrlsNeedASecret:
    def test_settings_refuse_urls_without_a_secret(self) -> None:
        with pytest.raises(ValidationError) as raised:
            FollowupSettings(webhook_urls="http://127.0.0.1:9/hooks")
        assert NO_SECRET in str(raised.value)
        assert FollowupSettings(webhook_urls=" , ").urls() == []

    def test_the_gateway_refuses_to_start(self, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FOLLOWUP_WEBHOOK_URLS", "http://127.0.0.1:9/hooks")
        monkeypatch.delenv("FOLLOWUP_WEBHOOK_SECRET", raising=False)
        with pytest.raises(SettingsError, match=NO_SECRET):  # the one-line reason the process prints
            create_app(GatewaySettings())

    def test_the_service_process_exits_with_the_reason(self, data_dir: Path) -> None:
        log = data_dir / "followup.log"
        process = start_process("services.followup", {"DATA_DIR": str(data_dir), "PORT": str(free_port()),
                                                      "FOLLOWUP_WEBHOOK_URLS": "http://127.0.0.1:9/hooks",
                                                      "FOLLOWUP_WEBHOOK_SECRET": ""}, log)
        try:
            assert process.wait(timeout=60) != 0
        finally:
            stop_process(process)
        assert NO_SECRET in log.read_text()


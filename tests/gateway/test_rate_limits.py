"""Rate limits at the gateway (docs/api.md section 12): per API key, per write key, and per address for
requests without credentials; bursts up to twice the rate; 429 with Retry-After. A clock the test
moves stands in for time, nothing sleeps."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.app import create_app
from services.gateway.rate_limit import RateLimiter
from services.gateway.settings import GatewaySettings
from tests.helpers import ADMIN, READER, assert_error, running

WRITE = ("dev-write-key", "")


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class TestTokenBucket:
    def test_a_full_bucket_lets_a_burst_of_twice_the_rate_through_then_refuses(self):
        clock = Monotonic()
        limiter = RateLimiter(10, clock)
        assert [limiter.retry_after("k") for _ in range(20)] == [0.0] * 20
        assert limiter.retry_after("k") == pytest.approx(0.1)

    def test_tokens_come_back_at_the_rate(self):
        clock = Monotonic()
        limiter = RateLimiter(10, clock)
        for _ in range(20):
            limiter.retry_after("k")
        clock.advance(0.5)  # five tokens
        assert [limiter.retry_after("k") == 0 for _ in range(6)] == [True] * 5 + [False]
        clock.advance(3600)  # never more than the burst
        assert sum(limiter.retry_after("k") == 0 for _ in range(30)) == 20

    def test_keys_have_their_own_buckets(self):
        limiter = RateLimiter(1, Monotonic())
        assert limiter.retry_after("a") == limiter.retry_after("a") == 0
        assert limiter.retry_after("a") > 0
        assert limiter.retry_after("b") == 0

    def test_zero_turns_the_limit_off(self):
        limiter = RateLimiter(0, Monotonic())
        assert all(limiter.retry_after("k") == 0 for _ in range(10_000))

    def test_idle_keys_are_forgotten_and_memory_is_bounded(self):
        clock = Monotonic()
        limiter = RateLimiter(1, clock, max_keys=100)
        for n in range(1000):
            limiter.retry_after(f"address-{n}")
        assert len(limiter) == 100
        clock.advance(2)  # a bucket idle for burst / rate seconds is full: the same as none
        limiter.retry_after("another")
        assert len(limiter) == 1

    def test_a_clock_going_backwards_takes_nothing_back(self):
        clock = Monotonic()
        limiter = RateLimiter(1, clock)
        limiter.retry_after("k")
        clock.advance(-100)
        assert limiter.retry_after("k") == 0


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


@pytest.fixture
async def limited(data_dir: Path, clock: Monotonic, monkeypatch):
    monkeypatch.setenv("GATEWAY_RATE_LIMIT_API", "5")
    monkeypatch.setenv("GATEWAY_RATE_LIMIT_INGEST", "3")
    monkeypatch.setenv("GATEWAY_RATE_LIMIT_ANONYMOUS", "2")
    async with running(create_app(GatewaySettings(), monotonic=clock)) as client:
        yield client


class TestGatewayLimits:
    async def test_an_api_key_gets_its_rate_and_a_burst_of_twice_it_then_429_with_retry_after(self, limited, clock):
        statuses = [(await limited.get("/api/funnels", headers=ADMIN)).status_code for _ in range(11)]
        assert statuses == [200] * 10 + [429]
        refused = await limited.get("/api/funnels", headers=ADMIN)
        assert_error(refused, 429, "rate_limited")
        assert refused.headers["retry-after"] == "1"
        assert "5 per second" in refused.json()["error"]["message"]
        clock.advance(0.2)  # one token back
        assert (await limited.get("/api/funnels", headers=ADMIN)).status_code == 200
        assert (await limited.get("/api/funnels", headers=ADMIN)).status_code == 429

    async def test_each_api_key_has_its_own_bucket(self, limited):
        for _ in range(10):
            await limited.get("/api/funnels", headers=ADMIN)
        assert (await limited.get("/api/funnels", headers=ADMIN)).status_code == 429
        assert (await limited.get("/api/funnels", headers=READER)).status_code == 200

    async def test_a_write_key_gets_the_ingest_rate(self, limited):
        sent = [(await limited.post("/v1/track", json={"userId": "u1", "event": "E"}, auth=WRITE)).status_code
                for _ in range(7)]
        assert sent == [200] * 6 + [429]
        # The API key's bucket is another one.
        assert (await limited.get("/api/funnels", headers=ADMIN)).status_code == 200

    async def test_requests_without_credentials_are_limited_per_address(self, limited, clock):
        statuses = [(await limited.get("/api/funnels")).status_code for _ in range(5)]
        assert statuses == [401] * 4 + [429]
        assert_error(await limited.get("/health"), 429, "rate_limited")
        # A guessed key is no way around it.
        guessed = await limited.get("/api/funnels", headers={"Authorization": "Bearer guess"})
        assert_error(guessed, 429, "rate_limited")
        assert guessed.headers["retry-after"] == "1"
        # Clients with a valid key are not held up by the flood.
        assert (await limited.get("/api/funnels", headers=ADMIN)).status_code == 200
        clock.advance(1)
        assert (await limited.get("/health")).status_code == 200

    async def test_zero_turns_every_limit_off(self, data_dir: Path, monkeypatch):
        for name in ("API", "INGEST", "ANONYMOUS"):
            monkeypatch.setenv(f"GATEWAY_RATE_LIMIT_{name}", "0")
        async with running(create_app(GatewaySettings(), monotonic=Monotonic())) as client:
            statuses = {(await client.get("/api/funnels", headers=ADMIN)).status_code for _ in range(300)}
            statuses |= {(await client.get("/health")).status_code for _ in range(300)}
            assert statuses == {200}

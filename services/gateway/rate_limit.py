"""Requests per second per key, with bursts up to twice that (docs/api.md section 12).

A token bucket per key: it holds at most `2 * rate` tokens, refills at `rate` per second, and each
request takes one. The clock is passed in (monotonic seconds) so tests move it instead of sleeping.
"""
from __future__ import annotations

import base64
import binascii
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from services.gateway.settings import GatewaySettings
from shared.auth import Credentials
from shared.errors import ApiError

# However many addresses a flood comes from, the buckets never take more memory than this.
MAX_KEYS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests per second per key; `rate <= 0` turns the limit off."""

    def __init__(self, rate: float, now: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.rate = rate
        self.burst = 2 * rate
        self.now = now
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        """Keys held (a key whose bucket is full again is forgotten)."""
        return len(self._buckets)

    def retry_after(self, key: str) -> float:
        """0 when the request may go (a token is taken); else the seconds until one is back."""
        if self.rate <= 0:
            return 0.0
        now = self.now()
        bucket = self._refilled(key, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        self._forget_full(now)
        return bucket

    def _forget_full(self, now: float) -> None:
        """Drop buckets idle long enough to be full again: a full bucket is the same as none."""
        refill = self.burst / self.rate
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if oldest.updated + refill > now and len(self._buckets) <= self.max_keys:
                return
            self._buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (HTTP's Retry-After has no fractions)."""
    return str(max(1, math.ceil(seconds)))


class GatewayLimits:
    """The gateway's buckets: one per API key, one per write key (sent with HTTP Basic, as the
    Segment SDKs do), and one per client address for requests without a valid key of either kind
    (so nobody floods the gateway with unauthenticated or guessed-key requests)."""

    def __init__(self, settings: GatewaySettings, credentials: Credentials, now: Callable[[], float]) -> None:
        self.credentials = credentials
        self.limiters = {
            "api": RateLimiter(settings.rate_limit_api, now),
            "ingest": RateLimiter(settings.rate_limit_ingest, now),
            "address": RateLimiter(settings.rate_limit_anonymous, now),
        }

    async def check(self, request: Request) -> None:
        """A FastAPI dependency: 429 with `Retry-After` once the request's bucket is empty."""
        kind, key = self.bucket_of(request)
        limiter = self.limiters[kind]
        wait = limiter.retry_after(key)
        if wait:
            raise ApiError(
                429,
                f"Too many requests {_WHOSE[kind]}: the limit is {limiter.rate:g} per second with bursts "
                f"of {limiter.burst:g}. Retry after {retry_after_header(wait)} s.",
                details=[{"limit_per_second": limiter.rate, "burst": limiter.burst, "per": kind}],
                headers={"Retry-After": retry_after_header(wait)},
            )

    def bucket_of(self, request: Request) -> tuple[str, str]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and self.credentials.role_of(token) is not None:
            return "api", token
        if scheme.lower() == "basic" and (user := _basic_user(token)) in self.credentials.write_keys:
            return "ingest", user
        return "address", request.client.host if request.client else "unknown"


_WHOSE = {"api": "for this API key", "ingest": "for this write key", "address": "without credentials from this address"}


def _basic_user(token: str) -> str | None:
    try:
        return base64.b64decode(token, validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return None

"""The real Segment Python SDK (segment-analytics-python), unchanged, pointed at a live gateway."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from segment import analytics
from segment.analytics import Client
from segment.analytics.request import APIError

from tests.helpers import READER, free_port, start_process, stop_process, wait_until_healthy


@pytest.fixture
def gateway_url(data_dir: Path) -> Iterator[str]:
    port = free_port()
    log = data_dir / "gateway.log"
    process = start_process("services.gateway", {"PORT": str(port), "DATA_DIR": str(data_dir / "live")}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, log)
        yield url
    finally:
        stop_process(process)


@pytest.fixture
def sdk(gateway_url: str) -> Iterator[list[Exception]]:
    """The SDK's module-level client configured as its README says; yields the errors it reported."""
    errors: list[Exception] = []
    analytics.default_client = None
    analytics.write_key, analytics.host, analytics.gzip = "dev-write-key", gateway_url, True
    analytics.on_error = lambda error, batch: errors.append(error)
    analytics.max_retries = 1
    yield errors
    analytics.shutdown()
    analytics.default_client = None
    analytics.write_key, analytics.host, analytics.gzip, analytics.on_error = None, None, False, None


def timeline_when(url: str, customer_id: str, count: int, timeout: float = 10) -> list[dict]:
    """The live server's timeline once it holds `count` events (its pipeline is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/api/customers/{customer_id}/timeline", headers=READER, timeout=5)
        items = response.json()["items"] if response.status_code == 200 else []
        if len(items) >= count or time.monotonic() > deadline:
            assert len(items) == count, items
            return items
        time.sleep(0.05)


class TestSegmentPythonSdk:
    def test_an_anonymous_visitor_who_signs_up_is_one_customer_with_every_event(self, sdk, gateway_url):
        analytics.track(anonymous_id="anon-sdk", event="Product Viewed", properties={"sku": "MUG-1"})
        analytics.page(anonymous_id="anon-sdk", name="Pricing",
                       properties={"url": "https://shop.example.com/pricing?utm_source=newsletter&utm_medium=email"})
        analytics.identify(user_id="user-sdk", anonymous_id="anon-sdk", traits={"email": "sdk@example.com"})
        analytics.track(user_id="crm-sdk-9", event="Lead Created")
        analytics.alias(previous_id="crm-sdk-9", user_id="user-sdk")
        analytics.track(anonymous_id="anon-sdk", event="Checkout Started")
        analytics.screen(user_id="user-sdk", name="Basket")
        analytics.group(user_id="user-sdk", group_id="acme", traits={"name": "Acme"})
        analytics.flush()
        assert sdk == []

        items = timeline_when(gateway_url, "user-sdk", 8)
        assert {i["customer_id"] for i in items} == {"user-sdk"}
        assert sorted(i["type"] for i in items) == ["alias", "group", "identify", "page", "screen", "track", "track",
                                                     "track"]
        by_name = {i["name"]: i for i in items if i["name"]}
        assert by_name["Pricing"]["channel"] == "email"
        assert by_name["Product Viewed"]["anonymous_id"] == "anon-sdk"
        assert by_name["Lead Created"]["user_id"] == "crm-sdk-9"
        assert all(i["occurred_at"].endswith("Z") and i["context"]["library"]["name"] == "analytics-python"
                   for i in items)
        for merged in ("anon-sdk", "crm-sdk-9"):
            assert timeline_when(gateway_url, merged, 8) == items

    def test_a_wrong_write_key_is_reported_to_the_sdk_as_401(self, gateway_url):
        client = Client("not-a-key", host=gateway_url, sync_mode=True, max_retries=0)
        with pytest.raises(APIError) as raised:
            client.track(user_id="u", event="Clicked")
        assert raised.value.status == 401

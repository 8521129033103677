"""Whatever a client puts in a path, a query string or a header, the gateway answers in the contract's
error shape or forwards it: never a 500 (docs/api.md section 0)."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.helpers import ADMIN, assert_error, free_port, running

CONTROL_PATHS = [
    "/v1/track%00",
    "/api/customers/%7F",
    "/api/customers/c1%0A",
    "/api/funnels/%1B/report",
    "/api/segments/%09/members",
    "/nothing%00",
]


class TestControlCharactersInPaths:
    @pytest.mark.parametrize("path", CONTROL_PATHS)
    async def test_a_control_character_in_a_path_is_a_400_with_or_without_credentials(self, gateway, path):
        for credentials in ({}, ADMIN, {"Authorization": "Basic ZGV2LXdyaXRlLWtleTo="}):
            for method in ("GET", "POST", "DELETE"):
                response = await gateway.request(method, path, headers=credentials)
                assert_error(response, 400, "invalid_path")
                assert "%" in response.json()["error"]["message"]  # says which character, encoded

    async def test_it_is_refused_before_any_hop(self, data_dir: Path, monkeypatch):
        # The services are unreachable: a request that got as far as a hop would be a 503.
        for service in ("INGEST", "SEGMENTATION", "FUNNEL", "FOLLOWUP"):
            monkeypatch.setenv(f"GATEWAY_{service}_URL", f"http://127.0.0.1:{free_port()}")
        async with running(create_app(GatewaySettings())) as client:
            assert_error(await client.post("/v1/track%00", auth=("dev-write-key", "")), 400, "invalid_path")
            assert_error(await client.get("/api/customers/%7F", headers=ADMIN), 400, "invalid_path")
            assert_error(await client.get("/api/customers/c1", headers=ADMIN), 503, "upstream_unavailable")

    async def test_printable_odd_characters_still_reach_the_service(self, gateway):
        for customer in ("a%20b", "caf%C3%A9", "100%25", "a%3Fb", "%E2%80%8B"):
            response = await gateway.get(f"/api/customers/{customer}", headers=ADMIN)
            assert_error(response, 404, "not_found")


class TestOddQueryStrings:
    @pytest.mark.parametrize("query", ["q=%00", "a=%ff&b=%FE", "x", "=&&=", "a=1&a=2", "%", "a=%zz", "k=%0D%0Aevil:1"])
    async def test_an_odd_query_string_is_forwarded_not_a_500(self, gateway, query):
        response = await gateway.get(f"/api/segments/value:high/members?{query}", headers=ADMIN)
        assert response.status_code < 500, response.text

    async def test_the_query_reaches_the_service_as_sent(self, gateway):
        response = await gateway.get("/api/segments/value:high/members?limit=abc", headers=ADMIN)
        assert_error(response, 422, "invalid_fields")
        assert response.json()["error"]["details"][0]["loc"] == ["query", "limit"]


class TestOddHeaders:
    @pytest.mark.parametrize("value", ["caf\xe9".encode("latin-1"), "café".encode(), b"\xff\xfe", b"a\tb"])
    async def test_a_header_value_outside_ascii_is_forwarded_not_a_500(self, gateway, value):
        response = await gateway.get("/api/customers/c1", headers={**ADMIN, "X-Custom": value})
        assert_error(response, 404, "not_found")

    @pytest.mark.parametrize("value", ["caf\xe9".encode("latin-1"), b"\xff", b"a\tb", b"x" * 300])
    async def test_an_unusable_request_id_is_replaced_by_a_fresh_one(self, gateway, value):
        response = await gateway.get("/api/customers/c1", headers={**ADMIN, "X-Request-ID": value})
        assert_error(response, 404, "not_found")
        rid = response.headers["x-request-id"]
        assert rid.isascii() and rid.isprintable() and len(rid) <= 200 and rid.encode() != value

    async def test_a_usable_request_id_is_still_echoed(self, gateway):
        response = await gateway.get("/api/customers/c1", headers={**ADMIN, "X-Request-ID": "trace-1:a/b"})
        assert response.headers["x-request-id"] == "trace-1:a/b"

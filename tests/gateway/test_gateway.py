"""The gateway as a frontend team meets it: routes, errors, auth, request ids, docs, health."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from services.gateway.app import create_app
from services.gateway.routes import service_for
from services.gateway.settings import GatewaySettings
from shared.auth import InsecureConfig, resolve_credentials
from shared.settings import CommonSettings
from tests.helpers import (
    ADMIN,
    READER,
    ROOT,
    assert_error,
    eventually,
    free_port,
    running,
    start_process,
    stop_process,
    wait_until_healthy,
)


class TestRouting:
    @pytest.mark.parametrize(
        ("method", "path", "service"),
        [
            ("POST", "/v1/batch", "ingest"),
            ("GET", "/api/ingest/quarantine", "ingest"),
            ("GET", "/api/customers/c1/timeline", "ingest"),
            ("DELETE", "/api/customers/c1", "ingest"),
            ("GET", "/api/customers/c1", "segmentation"),
            ("POST", "/api/segments:preview", "segmentation"),
            ("GET", "/api/segments/value:high/members", "segmentation"),
            ("GET", "/api/funnels/lifecycle/report", "funnel"),
            ("POST", "/api/followups/f1/complete", "followup"),
            ("GET", "/api/recommendations/customers/c1", "recommendation"),
            ("GET", "/api/recommendations/products/p1/related", "recommendation"),
            ("GET", "/api/unknown", None),
            ("GET", "/api/segmentsx", None),
        ],
    )
    def test_each_public_path_goes_to_its_service(self, method: str, path: str, service: str | None):
        assert service_for(method, path) == service

    async def test_unknown_route_is_a_404_in_the_contract_shape(self, gateway):
        assert_error(await gateway.get("/api/nothing-here", headers=ADMIN), 404, "not_found")
        assert_error(await gateway.get("/nothing-here"), 404, "not_found")


class TestAuth:
    async def test_api_without_a_key_is_401(self, gateway):
        response = await gateway.get("/api/funnels")
        assert_error(response, 401, "missing_api_key")
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_api_with_an_unknown_key_is_401(self, gateway):
        assert_error(await gateway.get("/api/funnels", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")

    async def test_a_basic_auth_header_is_not_an_api_key(self, gateway):
        response = await gateway.get("/api/funnels", headers={"Authorization": "Basic ZGV2LWFkbWluLWtleTo="})
        assert_error(response, 401, "missing_api_key")

    async def test_reader_and_admin_keys_pass_the_gateway(self, gateway):
        for headers in (ADMIN, READER):
            assert (await gateway.get("/api/funnels", headers=headers)).status_code != 401


class TestCredentials:
    def test_loopback_without_keys_uses_the_dev_keys(self):
        creds = resolve_credentials(CommonSettings(host="127.0.0.1", api_keys="", write_keys=""))
        assert creds.dev and creds.role_of("dev-admin-key") == "admin" and "dev-write-key" in creds.write_keys

    def test_other_address_without_keys_refuses_to_start(self):
        with pytest.raises(InsecureConfig, match="API_KEYS and WRITE_KEYS"):
            resolve_credentials(CommonSettings(host="0.0.0.0", api_keys="", write_keys=""))

    def test_configured_keys_replace_the_dev_keys(self):
        creds = resolve_credentials(CommonSettings(host="0.0.0.0", api_keys="a1:admin,r1:reader", write_keys="w1"))
        assert not creds.dev
        assert creds.role_of("a1") == "admin" and creds.role_of("r1") == "reader"
        assert creds.role_of("dev-admin-key") is None and creds.write_keys == {"w1"}

    def test_a_malformed_api_keys_setting_says_what_is_wrong(self):
        with pytest.raises(ValueError, match="key:admin"):
            resolve_credentials(CommonSettings(host="0.0.0.0", api_keys="justakey", write_keys="w"))


class TestMethods:
    async def test_a_wrong_method_is_405_and_says_which_one_to_use(self, gateway):
        response = await gateway.get("/v1/track", auth=("dev-write-key", ""))
        assert_error(response, 405, "method_not_allowed")
        assert "use POST" in response.json()["error"]["message"]


class TestBodies:
    async def test_a_body_over_the_gateway_limit_is_413_before_any_service(self, gateway):
        response = await gateway.post("/api/funnels", content=b"x" * (1024 * 1024 + 1), headers=ADMIN)
        assert_error(response, 413, "payload_too_large")

    async def test_bad_json_to_a_service_is_400(self, gateway):
        response = await gateway.post("/v1/track", content=b"{not json", auth=("dev-write-key", ""))
        assert_error(response, 400, "invalid_json")


class TestRequestIds:
    async def test_a_request_id_is_minted_when_none_is_sent(self, gateway):
        first, second = await gateway.get("/health"), await gateway.get("/health")
        assert first.headers["x-request-id"] and first.headers["x-request-id"] != second.headers["x-request-id"]

    async def test_the_clients_request_id_is_echoed_through_the_proxy(self, gateway):
        response = await gateway.get("/api/funnels", headers={**ADMIN, "X-Request-ID": "trace-123"})
        assert response.headers.get_list("x-request-id") == ["trace-123"]

    async def test_errors_carry_a_request_id_too(self, gateway):
        assert (await gateway.get("/api/funnels")).headers["x-request-id"]


class TestCors:
    async def test_allowed_origin_gets_cors_headers_once(self, data_dir, monkeypatch):
        monkeypatch.setenv("CORS_ORIGINS", "https://app.example.com")
        async with running(create_app(GatewaySettings())) as client:
            preflight = await client.options(
                "/api/funnels",
                headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
            response = await client.get("/api/funnels", headers={**ADMIN, "Origin": "https://app.example.com"})
            assert response.headers.get_list("access-control-allow-origin") == ["https://app.example.com"]

    async def test_other_origins_get_no_cors_headers(self, data_dir, monkeypatch):
        monkeypatch.setenv("CORS_ORIGINS", "https://app.example.com")
        async with running(create_app(GatewaySettings())) as client:
            response = await client.get("/health", headers={"Origin": "https://evil.example.com"})
            assert "access-control-allow-origin" not in response.headers


class TestOperations:
    async def test_health(self, gateway):
        assert (await gateway.get("/health")).json() == {"status": "ok", "service": "gateway"}

    async def test_ready_reports_every_service_store_and_bus(self, gateway):
        async def ready():  # consumers join their groups just after startup, as a probe would see
            response = await gateway.get("/ready")
            return response if response.status_code == 200 else None

        response = await eventually(ready)
        services = response.json()["services"]
        assert set(services) == {"ingest", "segmentation", "funnel", "followup", "recommendation"}
        for detail in services.values():
            assert detail["status"] == "ready"
            assert detail["checks"]["store"]["ok"] and detail["checks"]["bus"]["ok"]

    async def test_ready_is_503_with_detail_when_a_service_is_down(self, data_dir, monkeypatch):
        monkeypatch.setenv("GATEWAY_FUNNEL_URL", f"http://127.0.0.1:{free_port()}")
        async with running(create_app(GatewaySettings())) as client:
            response = await client.get("/ready")
            assert response.status_code == 503
            funnel = response.json()["services"]["funnel"]
            assert funnel["status"] == "not_ready" and "ConnectError" in funnel["error"]
            assert response.json()["services"]["ingest"]["status"] == "ready"
            assert_error(await client.get("/api/funnels", headers=ADMIN), 503, "upstream_unavailable")

    async def test_metrics_are_prometheus_text(self, gateway):
        await gateway.get("/health")
        response = await gateway.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        assert 'funnelstream_http_requests_total{method="GET",route="/health",service="gateway",status="200"}' in response.text

    async def test_one_merged_openapi_and_docs(self, gateway):
        spec = (await gateway.get("/openapi.json")).json()
        assert spec["info"]["title"] == "Funnelstream"
        assert {"/health", "/ready"} <= set(spec["paths"])
        assert {"apiKey", "writeKey"} <= set(spec["components"]["securitySchemes"])
        docs = await gateway.get("/docs")
        assert docs.status_code == 200 and "/openapi.json" in docs.text

    async def test_the_merged_openapi_is_a_valid_document_with_every_service(self, gateway):
        from openapi_spec_validator import validate

        spec = (await gateway.get("/openapi.json")).json()
        validate(spec)
        assert spec["paths"]["/v1/batch"]["post"]["security"] == [{"writeKey": []}]
        assert spec["paths"]["/api/customers/{customer_id}/timeline"]["get"]["security"] == [{"apiKey": []}]


class TestRemoteServices:
    async def test_gateway_proxies_to_a_service_running_as_its_own_process(self, data_dir, monkeypatch, tmp_path):
        port = free_port()
        log = tmp_path / "ingest.log"
        process = start_process("services.ingest", {"PORT": str(port), "DATA_DIR": str(tmp_path / "ingest")}, log)
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", process, log)
            monkeypatch.setenv("GATEWAY_INGEST_URL", f"http://127.0.0.1:{port}")
            async with running(create_app(GatewaySettings())) as client:
                ready = (await client.get("/ready")).json()
                assert ready["services"]["ingest"]["status"] == "ready"
                response = await client.get("/api/ingest/nothing", headers={**ADMIN, "X-Request-ID": "r-1"})
                assert_error(response, 404, "not_found")
                assert response.headers["x-request-id"] == "r-1"
        finally:
            stop_process(process)


class TestServer:
    def test_make_run_entry_point_serves_health_and_docs_and_prints_credentials(self, tmp_path):
        port = free_port()
        log = tmp_path / "gateway.log"
        process = start_process("services.gateway", {"PORT": str(port), "DATA_DIR": str(tmp_path / "data")}, log)
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", process, log)
            assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/ready").json()["status"] == "ready"
        finally:
            stop_process(process)
        output = log.read_text()
        assert f"http://127.0.0.1:{port}/docs" in output
        assert "dev-write-key" in output and "dev-admin-key" in output and "dev-reader-key" in output
        assert (tmp_path / "data" / "bus.db").exists() and (tmp_path / "data" / "funnel.db").exists()

    def test_refuses_a_public_address_without_keys(self, tmp_path):
        env = {"HOST": "0.0.0.0", "PORT": str(free_port()), "DATA_DIR": str(tmp_path), "API_KEYS": "", "WRITE_KEYS": ""}
        result = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=ROOT, env={**_base_env(), **env},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert "refusing to start" in result.stderr and "API_KEYS" in result.stderr


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in {"API_KEYS", "WRITE_KEYS"}}


class TestRestart:
    async def test_services_consume_again_after_a_stop_and_start_in_one_process(self, data_dir):
        app = create_app(GatewaySettings())
        for run in ("before", "after"):
            async with running(app) as client:
                sent = await client.post("/v1/track", json={"userId": f"u-{run}", "event": "Order Completed"},
                                         auth=("dev-write-key", ""))
                assert sent.status_code == 200

                async def profile_exists(customer: str = f"u-{run}") -> bool:
                    return (await client.get(f"/api/customers/{customer}", headers=READER)).status_code == 200

                await eventually(profile_exists)

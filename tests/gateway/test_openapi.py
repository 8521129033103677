"""The merged OpenAPI document is the whole API as the gateway serves it: every operation of every
service, each with the error statuses it can answer in the contract's error schema, so a client
generator knows them."""
from __future__ import annotations

import pytest

from services.gateway import openapi
from services.gateway.routes import service_for

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
async def spec(gateway):
    return (await gateway.get("/openapi.json")).json()


def operations(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def resolve(spec, schema):
    ref = schema.get("$ref", "")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


class TestMerge:
    async def test_two_services_documenting_one_path_keep_both_methods(self, spec):
        customer = spec["paths"]["/api/customers/{customer_id}"]
        assert {"get", "delete"} <= set(customer)
        assert customer["get"]["x-service"] == "segmentation" and customer["delete"]["x-service"] == "ingest"

    def test_merge_is_per_method(self):
        path = "/api/customers/{id}"
        one = {"paths": {path: {"get": {"responses": {"200": {"description": "ok"}}}}}}
        two = {"paths": {path: {"delete": {"responses": {"204": {"description": "gone"}}}}}}
        for order in ({"ingest": two, "segmentation": one}, {"segmentation": one, "ingest": two}):
            assert set(openapi.merge({"paths": {}}, order)["paths"][path]) == {"get", "delete"}

    async def test_every_documented_operation_is_routed_to_the_service_that_documents_it(self, spec):
        for path, method, op in operations(spec):
            if path.startswith(("/api/", "/v1/")):
                assert service_for(method.upper(), path) == op["x-service"], (method, path)


class TestErrorResponses:
    async def test_there_is_one_error_schema_in_the_contracts_shape(self, spec):
        error = spec["components"]["schemas"]["Error"]
        assert error["required"] == ["error"]
        assert set(error["properties"]["error"]["required"]) == {"code", "message", "details"}

    async def test_every_operation_documents_the_statuses_it_can_answer(self, spec):
        assert "503" in spec["paths"]["/ready"]["get"]["responses"]
        for path, method, op in operations(spec):
            statuses = set(op["responses"])
            expected = {"429"} | ({"400"} if path.startswith(("/api/", "/v1/")) else set())
            if path.startswith("/api/"):
                expected |= {"401", "403", "503"}
            if path.startswith("/v1/"):
                expected |= {"401", "503"}
            if "{" in path:
                expected.add("404")
            if "requestBody" in op:
                expected |= {"413", "422"}
            assert expected <= statuses, (method, path, sorted(expected - statuses))

    async def test_writes_under_api_document_conflicts(self, spec):
        for path, method in [("/api/funnels", "post"), ("/api/segments/{key}", "put"),
                             ("/api/followups/policies/{key}", "delete"), ("/api/followups/{followup_id}/complete", "post")]:
            assert "409" in spec["paths"][path][method]["responses"], (method, path)
        assert "409" not in spec["paths"]["/api/segments:preview"]["post"]["responses"]
        assert "409" not in spec["paths"]["/api/funnels"]["get"]["responses"]

    async def test_errors_use_the_error_schema_and_429_documents_retry_after(self, spec):
        for path, method, op in operations(spec):
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and path != "/ready":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            assert "Retry-After" in op["responses"]["429"]["headers"]

    async def test_the_document_is_still_valid(self, spec):
        from openapi_spec_validator import validate

        validate(spec)

"""One OpenAPI document for the whole API: the services' documents merged with the gateway's, each
operation with the errors it can answer (in the contract's shape, not FastAPI's 422 shape)."""
from __future__ import annotations

import json
from typing import Any

from services.gateway.routes import service_for

SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "API key (role admin or reader)."},
    "writeKey": {"type": "http", "scheme": "basic", "description": "Ingest write key as the user name."},
}
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "Every error, whatever the status (docs/api.md section 0).",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "details"],
        "properties": {
            "code": {"type": "string", "description": "Stable snake_case code a program can check.",
                     "examples": ["not_found"]},
            "message": {"type": "string", "description": "What was wrong and what would be right."},
            "details": {"type": "array", "items": {}, "description": "Per field or per item, when known."},
        },
    }},
}
ERRORS = {
    "400": "Malformed: not JSON, not valid gzip or base64, or a control character in the path.",
    "401": "No credentials, or unknown ones.",
    "403": "This API key's role may not do this (the admin role is needed).",
    "404": "No such resource.",
    "408": "The request body did not arrive in time (HTTP_BODY_TIMEOUT_SECONDS).",
    "409": "Conflicts with what exists: taken, built in, or already finished.",
    "413": "The body is over the limit.",
    "422": "Valid JSON, invalid fields: `details` says which and why.",
    "429": "Rate limited (docs/api.md section 12): retry after `Retry-After` seconds.",
    "503": "A service cannot be reached: retry after `Retry-After` seconds.",
    "504": "A service did not answer in time.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
OWN_PATHS = {"/health", "/ready", "/metrics"}


def merge(gateway: dict[str, Any], services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {**gateway, "paths": {p: _with_errors(p, ops) for p, ops in gateway.get("paths", {}).items()}}
    schemas: dict[str, Any] = dict(gateway.get("components", {}).get("schemas", {}))
    for service, doc in services.items():
        renames = _add_schemas(schemas, service, doc.get("components", {}).get("schemas", {}))
        for path, operations in doc.get("paths", {}).items():
            if path in OWN_PATHS:
                continue
            reachable = {m: op for m, op in operations.items() if service_for(m.upper(), path) == service}
            # Per method: two services may document one path (GET and DELETE /api/customers/{id}).
            merged["paths"].setdefault(path, {}).update(
                _with_errors(path, _with_security(path, _rename_refs(reachable, renames), service)))
    schemas["Error"] = ERROR_SCHEMA
    merged["components"] = {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES}
    return merged


def _with_errors(path: str, operations: dict[str, Any]) -> dict[str, Any]:
    documented = {}
    for method, op in operations.items():
        responses = dict(op.get("responses", {}))
        for status in _error_statuses(path, method, op):
            if status not in responses or status == "422":  # FastAPI's 422 is not our shape
                responses[status] = _error_response(status)
        documented[method] = {**op, "responses": responses}
    return documented


def _error_statuses(path: str, method: str, op: dict[str, Any]) -> list[str]:
    """What the gateway and the service can answer besides success (a superset, never less)."""
    statuses = {"429"}
    if path.startswith(("/api/", "/v1/")):
        statuses |= {"400", "401", "503", "504"}
    if path.startswith("/api/"):
        statuses.add("403")
        if method in {"post", "put", "delete"} and not path.endswith(":preview"):
            statuses.add("409")
    if "{" in path:
        statuses.add("404")
    if op.get("parameters"):
        statuses.add("422")
    if "requestBody" in op:
        statuses |= {"408", "413", "422"}
    return sorted(statuses)


def _error_response(status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status in {"429", "503"}:
        response["headers"] = RETRY_AFTER
    return response


def _add_schemas(schemas: dict[str, Any], service: str, new: dict[str, Any]) -> dict[str, str]:
    """Add a service's schemas; one whose name is taken by a different schema gets a prefix."""
    renames: dict[str, str] = {}
    for name, schema in new.items():
        if name in schemas and schemas[name] != schema:
            renames[name] = f"{service}_{name}"
    for name, schema in new.items():
        schemas[renames.get(name, name)] = _rename_refs(schema, renames)
    return renames


def _rename_refs(doc: Any, renames: dict[str, str]) -> Any:
    if not renames:
        return doc
    text = json.dumps(doc)
    for old, new in renames.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    return json.loads(text)


def _with_security(path: str, operations: dict[str, Any], service: str) -> dict[str, Any]:
    scheme = "writeKey" if path.startswith("/v1/") else "apiKey"
    return {
        method: {**op, "security": [{scheme: []}], "tags": op.get("tags") or [service], "x-service": service}
        for method, op in operations.items()
    }

"""One OpenAPI document for the whole API: the services' documents merged with the gateway's."""
from __future__ import annotations

import json
from typing import Any

SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "API key (role admin or reader)."},
    "writeKey": {"type": "http", "scheme": "basic", "description": "Ingest write key as the user name."},
}


def merge(gateway: dict[str, Any], services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {**gateway, "paths": dict(gateway.get("paths", {}))}
    schemas: dict[str, Any] = dict(gateway.get("components", {}).get("schemas", {}))
    for service, doc in services.items():
        renames = _add_schemas(schemas, service, doc.get("components", {}).get("schemas", {}))
        for path, operations in doc.get("paths", {}).items():
            if path in {"/health", "/ready", "/metrics"}:
                continue  # the gateway's own
            merged["paths"][path] = _with_security(path, _rename_refs(operations, renames), service)
    merged["components"] = {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES}
    return merged


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
        method: {**op, "security": [{scheme: []}], "tags": op.get("tags") or [service]}
        for method, op in operations.items()
    }

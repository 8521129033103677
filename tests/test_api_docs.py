"""docs/api.md, the API reference users read, stays true to the API the gateway serves: every
route of the merged OpenAPI has a heading there and every route it names exists, with the role the
code enforces; every curl example calls a route that exists."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.helpers import READER, ROOT, running

DOC = ROOT / "docs" / "api.md"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ROUTE_HEADING = re.compile(r"^#### `([A-Z]+) (/\S*)` · (none|write key|reader|admin)$")
# Served by the gateway beside the API, not described in /openapi.json itself.
OUTSIDE_SPEC = {("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs")}
GATEWAY = "http://127.0.0.1:8080"
CURL_START = re.compile(r"^(\w+=\$\()?curl ")  # curl ..., or VAR=$(curl ... (an id kept for later)


def documented_routes(text: str) -> dict[tuple[str, str], str]:
    """(method, path) -> role, from the route headings; a heading that is almost one fails."""
    routes: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        if not line.startswith("#### `"):
            continue
        match = ROUTE_HEADING.match(line)
        assert match, f"a route heading reads #### `METHOD /path` · none|write key|reader|admin: {line!r}"
        method, path, role = match.groups()
        assert method in METHODS, line
        assert (method, path) not in routes, f"documented twice: {line!r}"
        routes[(method, path)] = role
    return routes


def template(path: str) -> re.Pattern[str]:
    """A route path as a pattern: `{customer_id}` stands for any one segment."""
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")


def resolves(method: str, path: str, routes: set[tuple[str, str]]) -> bool:
    return any(m == method and template(p).match(path) for m, p in routes)


def curl_commands(text: str) -> Iterator[str]:
    """Every curl command of the shell examples, continuation lines joined."""
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        command = ""
        for line in block.splitlines():
            command += line.rstrip("\\").strip() + " " if command or CURL_START.match(line) else ""
            if command and not line.endswith("\\"):
                yield command
                command = ""


def curl_route(command: str) -> tuple[str, str]:
    url = re.search(re.escape(GATEWAY) + r"(/[^\s'\"?]*)", command)
    assert url, f"an example that does not call the gateway at {GATEWAY}: {command}"
    explicit = re.search(r"-X ([A-Z]+)", command)
    method = explicit.group(1) if explicit else "POST" if re.search(r"\s-d\s", command) else "GET"
    return method, url.group(1)


def role_in_spec(op: dict[str, Any]) -> str:
    """The credentials the OpenAPI asks for: none, a write key or an API key (reader or admin)."""
    schemes = {name for requirement in op.get("security", []) for name in requirement}
    return "write key" if "writeKey" in schemes else "reader" if "apiKey" in schemes else "none"


@pytest.fixture
async def served(data_dir: Path) -> dict[str, Any]:
    """The merged OpenAPI; the routes that refuse a reader key (403 admin_required), found by
    calling each one with it; and what the routes outside the spec answer."""
    async with running(create_app(GatewaySettings())) as gateway:
        spec = (await gateway.get("/openapi.json")).json()
        admin_routes = set()
        for method, path in spec_routes(spec):
            if not path.startswith("/api/"):
                continue
            url = re.sub(r"\{[^/]+?\}", "docs-check", path)
            body = {} if method in ("POST", "PUT", "PATCH") else None
            response = await gateway.request(method, url, json=body, headers=READER)
            assert response.status_code != 401, (method, path, response.text)
            if response.status_code == 403 and response.json()["error"]["code"] == "admin_required":
                admin_routes.add((method, path))
        outside = {route: (await gateway.get(route[1])).status_code for route in OUTSIDE_SPEC}
    return {"spec": spec, "admin": admin_routes, "outside": outside}


@pytest.fixture
def doc() -> str:
    return DOC.read_text()


def spec_routes(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in spec["paths"].items()
            for method, op in item.items() if method.upper() in METHODS}


class TestApiReference:
    async def test_every_served_route_is_documented(self, served: dict[str, Any], doc: str) -> None:
        missing = set(spec_routes(served["spec"])) - set(documented_routes(doc))
        assert not missing, f"document these in docs/api.md (#### `METHOD /path` · role): {sorted(missing)}"

    async def test_every_documented_route_exists(self, served: dict[str, Any], doc: str) -> None:
        unknown = set(documented_routes(doc)) - set(spec_routes(served["spec"])) - OUTSIDE_SPEC
        assert not unknown, f"docs/api.md documents routes the gateway does not serve: {sorted(unknown)}"
        assert OUTSIDE_SPEC <= set(documented_routes(doc))
        assert all(status == 200 for status in served["outside"].values()), served["outside"]

    async def test_each_route_names_the_role_the_code_enforces(self, served: dict[str, Any], doc: str) -> None:
        documented = documented_routes(doc)
        wrong = {
            (method, path): (documented[(method, path)], role)
            for (method, path), op in spec_routes(served["spec"]).items()
            if (method, path) in documented
            and documented[(method, path)] != (role := "admin" if (method, path) in served["admin"] else role_in_spec(op))
        }
        assert not wrong, f"(documented, enforced) roles differ: {wrong}"
        assert all(documented[route] == "none" for route in OUTSIDE_SPEC)

    async def test_routes_named_in_the_text_exist(self, served: dict[str, Any], doc: str) -> None:
        known = set(spec_routes(served["spec"])) | OUTSIDE_SPEC
        named = re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)[^`]*`", doc)
        assert len(named) >= len(known)
        unknown = sorted({(m, p) for m, p in named if not resolves(m, p, known)})
        assert not unknown, f"docs/api.md names routes that do not exist: {unknown}"

    async def test_every_curl_example_calls_a_route_that_exists(self, served: dict[str, Any], doc: str) -> None:
        known = set(spec_routes(served["spec"])) | OUTSIDE_SPEC
        calls = [(curl_route(command), command) for command in curl_commands(doc)]
        assert len(calls) >= len(known)  # an example per route at least
        wrong = [command for (method, path), command in calls if not resolves(method, path, known)]
        assert not wrong, "\n".join(wrong)
        example_of = {route for route in known if any(resolves(*call, {route}) for call, _ in calls)}
        assert example_of == known, f"routes without an example: {sorted(known - example_of)}"


class TestTheReadmePointsAtIt:
    def test_the_readme_links_the_reference_in_this_repository(self) -> None:
        readme = (ROOT / "README.md").read_text()
        assert "docs/api.md" in readme
        assert "../shared/API.md" not in readme, "users clone only this repository: link docs/api.md"


class TestParsing:
    """The test's own reading of the page, on small made-up pages."""

    def test_a_heading_with_a_typo_is_refused(self) -> None:
        with pytest.raises(AssertionError):
            documented_routes("#### `GET /api/segments` - reader\n")

    def test_paths_with_ids_and_shell_variables_resolve_to_their_template(self) -> None:
        routes = {("POST", "/api/followups/{followup_id}/snooze"), ("GET", "/api/segments/{key}")}
        assert resolves("POST", "/api/followups/$FOLLOWUP/snooze", routes)
        assert resolves("GET", "/api/segments/value:high", routes)
        assert not resolves("GET", "/api/segments/value:high/members", routes)
        assert not resolves("DELETE", "/api/segments/x", routes)

    def test_curl_commands_across_lines_and_their_methods(self) -> None:
        page = ("```sh\ncurl -s -X PUT http://127.0.0.1:8080/api/segments/a -H 'x' \\\n  -d '{}'\n"
                "curl -s -u k: http://127.0.0.1:8080/v1/track -d '{}'\n"
                "curl -s 'http://127.0.0.1:8080/api/segments?limit=1'\n"
                "ID=$(curl -s -X POST http://127.0.0.1:8080/api/followups -d '{}' \\\n  | python3 -c 'print(1)')\n```\n")
        assert [curl_route(c) for c in curl_commands(page)] == [
            ("PUT", "/api/segments/a"), ("POST", "/v1/track"), ("GET", "/api/segments"), ("POST", "/api/followups")]

"""A NUL character (U+0000) sent to any service's API, in a query, a cursor or a JSON body, is a 4xx
naming where it is, never a 500: PostgreSQL cannot hold it in text. Every service on PostgreSQL
(and on SQLite, which would take it, for the same answers). The gateway already refuses control
characters in paths; queries and bodies reach the services as sent.

Each case here was a 500 on PostgreSQL ("invalid byte sequence for encoding UTF8: 0x00")."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.paging import encode_cursor
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ADMIN, READER, assert_error, running

SERVICES = ("INGEST", "SEGMENTATION", "FUNNEL", "FOLLOWUP")
RULE = {"field": "revenue", "op": "gt", "value": 1}


@pytest.fixture
async def gateway_app(data_dir: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FastAPI]:
    """Every service on a store of the kind `store_url` is (one database each on PostgreSQL)."""
    databases = []
    if store_url.startswith("postgresql"):
        databases = [await create_pg_database() for _ in SERVICES]
        for service, url in zip(SERVICES, databases, strict=True):
            monkeypatch.setenv(f"{service}_DATABASE_URL", url)
    try:
        yield create_app(GatewaySettings())
    finally:
        for url in databases:
            await drop_pg_database(url)


@pytest.fixture
async def client(gateway_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(gateway_app) as client:
        yield client


QUERIES: list[tuple[str, dict[str, str], str]] = [  # (path, query, the parameter the answer names)
    ("/api/segments/lifecycle:new/history", {"customer_id": "a\x00"}, "customer_id"),
    ("/api/followups", {"customer_id": "a\x00"}, "customer_id"),
    ("/api/followups", {"assignee": "\x00"}, "assignee"),
    ("/api/funnels/lifecycle/report", {"breakdown": "segment:a\x00"}, "breakdown"),
    ("/api/funnels/lifecycle/report", {"breakdown": "traits.a\x00"}, "breakdown"),
    ("/api/ingest/quarantine", {"limit": "1", "x\x00": "1"}, "x\x00"),
]

CURSORS: list[tuple[str, str]] = [  # a well-formed cursor holding a NUL: the API never gives one out
    ("/api/segments/lifecycle:new/members", encode_cursor("a\x00")),
    ("/api/funnels/lifecycle/stages/awareness/customers", encode_cursor(1.0, "a\x00")),
    ("/api/customers/u1/timeline", encode_cursor("2024-01-01T00:00:00+00:00", "a\x00")),
    ("/api/segments", encode_cursor("a\x00")),
]

BODIES: list[tuple[str, str, dict[str, Any], list[Any]]] = [  # (method, path, body, where the answer points)
    ("POST", "/api/segments", {"key": "w", "name": "a\x00", "rule": RULE}, ["body", "name"]),
    ("POST", "/api/segments", {"key": "w", "description": "\x00", "rule": RULE}, ["body", "description"]),
    ("POST", "/api/segments", {"key": "w", "rule": {"event": "a\x00", "within_days": 3}}, ["body", "rule", "event"]),
    ("POST", "/api/segments:preview", {"rule": {"event": "Signed Up", "within_days": 3,
                                                "where": {"field": "plan", "op": "eq", "value": "x\x00"}}},
     ["body", "rule", "where", "value"]),
    ("PUT", "/api/segments/lifecycle:new", {"rule": {"all": [RULE, {"field": "traits.\x00", "op": "exists"}]}},
     ["body", "rule", "all", 1, "field"]),
    ("POST", "/api/followups", {"customer_id": "a\x00", "due_at": "2030-01-01T00:00:00Z"}, ["body", "customer_id"]),
    ("POST", "/api/followups", {"customer_id": "a", "due_at": "2030-01-01T00:00:00Z", "note": "\x00"}, ["body", "note"]),
    ("POST", "/api/followups/policies", {"key": "p", "assignee": "a\x00",
                                         "trigger": {"on": "segment_entered", "segment": "lifecycle:new"}},
     ["body", "assignee"]),
    ("POST", "/api/funnels", {"key": "f", "conversion_window_days": 1, "stages": [
        {"key": "a", "name": "A\x00", "match": {"type": "page"}}]}, ["body", "stages", 0, "name"]),
    ("POST", "/api/funnels", {"key": "f", "conversion_window_days": 1, "stages": [
        {"key": "a", "match": {"type": "track", "event": "x\x00"}}]}, ["body", "stages", 0, "match", "event"]),
    ("POST", "/api/funnels", {"key": "f", "conversion_window_days": 1, "stages": [
        {"key": "a", "match": {"type": "page"}}], "\x00": 1}, ["body", "\x00"]),
]


class TestNulCharacters:
    @pytest.mark.parametrize(("path", "query", "name"), QUERIES)
    async def test_a_nul_in_a_query_is_a_422_naming_the_parameter(self, client: httpx.AsyncClient, path: str,
                                                                  query: dict[str, str], name: str) -> None:
        response = await client.get(path, params=query, headers=READER)
        assert_error(response, 422, "invalid_fields")
        assert response.json()["error"]["details"] == [{"loc": ["query", name], "msg": "contains a NUL character (U+0000)"}]

    @pytest.mark.parametrize(("path", "cursor"), CURSORS)
    async def test_a_cursor_holding_a_nul_is_one_the_api_never_gave_out(self, client: httpx.AsyncClient, path: str,
                                                                         cursor: str) -> None:
        assert_error(await client.get(path, params={"cursor": cursor}, headers=READER), 400, "invalid_cursor")

    @pytest.mark.parametrize(("method", "path", "body", "loc"), BODIES)
    async def test_a_nul_in_a_body_is_a_422_pointing_at_it_and_nothing_is_saved(
        self, client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], loc: list[Any]
    ) -> None:
        response = await client.request(method, path, json=body, headers=ADMIN)
        assert_error(response, 422, "invalid_fields")
        assert response.json()["error"]["details"] == [{"loc": loc, "msg": "contains a NUL character (U+0000)"}]
        listed = {"segments": "/api/segments", "followups": "/api/followups", "funnels": "/api/funnels"}
        for kind, url in listed.items():
            answer = (await client.get(url, headers=READER)).json()
            items = answer["items"] if isinstance(answer, dict) else answer
            assert not [i for i in items if i.get("key") in ("w", "f") or i.get("customer_id") == "a"], kind

    async def test_ingest_keeps_a_nul_inside_properties(self, client: httpx.AsyncClient) -> None:
        """Properties are stored as JSON bytes everywhere, so a NUL there is kept, not refused."""
        response = await client.post("/v1/track", auth=("dev-write-key", ""), json={
            "userId": "u1", "event": "Noted", "messageId": "m1", "properties": {"note": "a\x00b"}})
        assert response.status_code == 200 and response.json()["accepted"] == 1, response.text

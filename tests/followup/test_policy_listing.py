"""GET /api/followups/policies is paged as the contract's lists are: the defaults first in their
fixed order, then custom policies by key, each once; a cursor that outlives the policy it names;
bad limits and forged cursors refused in the contract's error shape. SQLite and PostgreSQL."""
from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from services.followup.policies import DEFAULT_POLICIES
from tests.followup.support import Followups
from tests.helpers import ADMIN, READER, assert_error

PATH = "/api/followups/policies"


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


def cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


async def create(fu: Followups, key: str) -> None:
    response = await fu.client.post(PATH, headers=ADMIN, json={
        "key": key, "trigger": {"on": "segment_entered", "segment": "vip"}})
    assert response.status_code == 201, response.text


async def page(fu: Followups, **params: Any) -> dict[str, Any]:
    response = await fu.client.get(PATH, params=params, headers=READER)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestListing:
    async def test_defaults_first_in_their_order_then_custom_by_key_each_once(self, fu: Followups) -> None:
        for key in ("zeta", "alpha", "mid"):  # "alpha" sorts before every default, "zeta" after
            await create(fu, key)
        edited = await fu.client.put(f"{PATH}/welcome_new", headers=ADMIN, json={
            "trigger": {"on": "segment_entered", "segment": "lifecycle:new"}, "due_in_hours": 4})
        assert edited.status_code == 200, edited.text  # an edited default keeps its place, listed once
        expected = [*DEFAULT_POLICIES, "alpha", "mid", "zeta"]
        first = await page(fu)
        assert ([p["key"] for p in first["items"]], first["next_cursor"]) == (expected, None)
        assert [p["built_in"] for p in first["items"]] == [True] * len(DEFAULT_POLICIES) + [False] * 3
        assert {p["key"]: p["version"] for p in first["items"]}["welcome_new"] == 2
        for limit in (1, 2, 3, len(DEFAULT_POLICIES), len(DEFAULT_POLICIES) + 1, 1000):
            assert [p["key"] for p in await fu.paged(PATH, limit=limit)] == expected, limit
        assert (await page(fu, limit=len(expected)))["next_cursor"] is None

    async def test_a_page_resumes_after_its_cursor_even_when_that_policy_was_deleted(self, fu: Followups) -> None:
        for key in ("a1", "a2", "a3"):
            await create(fu, key)
        first = await page(fu, limit=len(DEFAULT_POLICIES) + 1)
        assert first["items"][-1]["key"] == "a1"
        assert (await fu.client.delete(f"{PATH}/a1", headers=ADMIN)).status_code == 204
        rest = await page(fu, cursor=first["next_cursor"])
        assert ([p["key"] for p in rest["items"]], rest["next_cursor"]) == (["a2", "a3"], None)

    @pytest.mark.parametrize(("params", "status", "code"), [
        ({"limit": 0}, 422, "invalid_fields"), ({"limit": 1001}, 422, "invalid_fields"),
        ({"cursor": "nonsense"}, 400, "invalid_cursor"), ({"cursor": "%%%"}, 400, "invalid_cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"welcome_new").decode()}, 400, "invalid_cursor"),  # not JSON
        ({"cursor": cursor("not a key!")}, 400, "invalid_cursor"), ({"cursor": cursor("")}, 400, "invalid_cursor"),
        ({"cursor": cursor(7)}, 400, "invalid_cursor"), ({"cursor": cursor("a", "b")}, 400, "invalid_cursor"),
    ])
    async def test_a_bad_limit_or_cursor_is_refused(self, fu: Followups, params: dict[str, Any], status: int,
                                                    code: str) -> None:
        assert_error(await fu.client.get(PATH, params=params, headers=READER), status, code)

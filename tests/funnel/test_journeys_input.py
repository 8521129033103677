"""Bad input to the journey analytics routes (docs/api.md section 9): a clear 422 naming the
parameter (a 404 for an unknown funnel), never a 500 or a minute of work. No SQL is involved in
refusing, so one store (SQLite) and one gateway serve every case."""
from __future__ import annotations

import time

from tests.funnel.support import Funnels, at
from tests.helpers import READER

CASES = [
    ("trends", {"interval": "hour"}, "interval"),
    ("trends", {"interval": "day", "from": "1900-01-01T00:00:00Z", "to": "2000-01-01T00:00:00Z"}, "from"),  # 100 years by day
    ("trends", {"from": at(1), "to": at(0)}, "from"), ("trends", {"from": "yesterday"}, "from"),
    ("attribution", {"stage": "purchase", "model": "u_shaped"}, "model"), ("attribution", {"stage": "nope"}, "stage"),
    ("attribution", {}, "stage"), ("attribution", {"stage": "purchase", "from": at(1), "to": at(0)}, "from"),
    ("touchpoints", {"stage": "awareness"}, "stage"), ("touchpoints", {"stage": "nope"}, "stage"),
    ("touchpoints", {}, "stage"), ("touchpoints", {"stage": "purchase", "from": at(1), "to": at(0)}, "from"),
    ("paths", {"stage": "awareness"}, "stage"), ("paths", {"stage": "nope"}, "stage"),
    ("paths", {"stage": "purchase", "steps": 0}, "steps"), ("paths", {"stage": "purchase", "steps": 11}, "steps"),
    ("paths", {"stage": "purchase", "from": at(1), "to": at(0)}, "from"),
]


async def test_bad_input_is_a_quick_422_naming_the_parameter(funnels: Funnels) -> None:
    for route, params, loc in CASES:
        started = time.monotonic()
        response = await funnels.client.get(f"/api/funnels/lifecycle/{route}", params=params, headers=READER)
        assert response.status_code == 422, (route, params, response.text)
        assert loc in str(response.json()["error"]["details"]), (route, params, response.text)
        assert time.monotonic() - started < 5, (route, params)


async def test_an_unknown_funnel_is_a_404(funnels: Funnels) -> None:
    for route, params in [("trends", {}), ("attribution", {"stage": "purchase"}), ("touchpoints", {"stage": "purchase"}),
                          ("paths", {"stage": "purchase"})]:
        response = await funnels.client.get(f"/api/funnels/nope/{route}", params=params, headers=READER)
        assert response.status_code == 404, (route, response.text)

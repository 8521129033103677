"""What the recommendation tests share: a hand-made shop whose right answers are worked out by
hand or by a brute-force reference of the documented formula, sent as an SDK sends it."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import httpx
from fastapi import FastAPI

from services.recommendation.logic import Tuning
from shared.clock import FixedClock
from shared.events import CUSTOMERS, INTERACTIONS
from shared.service import Runtime
from tests.funnel.support import BASIC, DAY, T0, Funnels, identify, order, track
from tests.helpers import ADMIN, READER, eventually

__all__ = ["BASIC", "T0", "Shop", "bought", "identify", "order", "reference", "refund", "track", "viewed"]

# Bundle A (tea, cups, saucers), bundle B (pen, ink, paper), and a bag everyone buys.
# The B customers are in France (six of them: enough for a country's own popular list).
A = {"a1": ["tea", "cups", "bag"], "a2": ["tea", "saucers", "bag"], "a3": ["cups", "saucers", "bag"]}
B = {"b1": ["pen", "ink", "bag"], "b2": ["pen", "paper", "bag"], "b3": ["ink", "paper", "bag"],
     "b4": ["pen", "ink", "paper", "bag"], "b5": ["pen", "bag"], "b6": ["ink", "bag"]}
Q = {"q": ["tea"]}


TUNING = Tuning()  # the parameters the formula is read with (the answers are the reference's own)


def bought(mid: str, user: str | None, products: list[str], days: float = 0, anon: str | None = None,
           order_id: str | None = None) -> dict[str, Any]:
    return order(mid, user, days, anon, order_id=order_id or f"order-{mid}",
                 products=[{"product_id": p, "quantity": 1, "price": 2.5} for p in products])


def refund(mid: str, user: str, order_id: str, products: list[str] | None = None, days: float = 0) -> dict[str, Any]:
    extra = {"products": [{"product_id": p, "quantity": 1} for p in products]} if products else {}
    return track(mid, user, "Order Refunded", days, order_id=order_id, **extra)


def viewed(mid: str, user: str | None, product: str, days: float = 0, anon: str | None = None) -> dict[str, Any]:
    return track(mid, user, "Product Viewed", days, anon, product_id=product)


def shop_messages() -> list[dict[str, Any]]:
    messages = [bought(f"{c}-o", c, products) for c, products in {**A, **B, **Q}.items()]
    messages += [identify(f"{c}-id", c, country="France") for c in B]
    messages += [identify(f"{c}-id", c, country="United Kingdom") for c in (*A, *Q)]
    return messages


def reference(bought: dict[str, dict[str, float]], viewed: dict[str, dict[str, float]], who: str,
              t: Tuning = TUNING) -> list[tuple[str, float, list[str]]]:
    """Brute force over customers, as docs/api.md section 10 and logic.py's docstring put it:
    score(j) = sum over the customer's products i of u_i * sum over customers c having both of
    x_ci x_cj / size_c^d, divided by n_i^a n_j^g. Inputs: customer -> product -> day."""
    x: dict[str, dict[str, float]] = defaultdict(dict)
    for c, products in viewed.items():
        for p in products:
            x[c][p] = t.view_weight
    for c, products in bought.items():
        for p in products:
            x[c][p] = 1.0
    n = defaultdict(float, {p: float(sum(1 for c in bought if p in bought[c])) for c in bought for p in bought[c]})
    size = {c: sum(row.values()) for c, row in x.items()}
    latest = max([*bought.get(who, {}).values(), *viewed.get(who, {}).values()])
    u = {p: (t.view_weight if p not in bought.get(who, {}) else 1.0) * 0.5 ** ((latest - d) / t.half_life_days)
         for p, d in {**viewed.get(who, {}), **bought.get(who, {})}.items()}
    scores: dict[str, float] = defaultdict(float)
    parts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for i, ui in u.items():
        for c, row in x.items():
            if i not in row:
                continue
            for j, xcj in row.items():
                part = ui * row[i] * xcj / size[c] ** t.customer_damping / max(n[i], 1) ** t.source_damping
                scores[j] += part / max(n[j], 1) ** t.target_damping
                if j != i:
                    parts[j][i] += part
    ranked = sorted((p for p, s in scores.items() if s > 0 and p not in bought.get(who, {})),
                    key=lambda p: (-round(scores[p], 9), p))
    return [(p, scores[p], [i for i, _ in sorted(parts[p].items(), key=lambda kv: (-kv[1], kv[0]))][:t.because])
            for p in ranked]


class Shop(Funnels):
    """The gateway with its in-process services, as the funnel tests drive it, waiting for the
    recommendation service too."""

    def __init__(self, gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> None:
        super().__init__(gateway_app, client, clock)
        self.recommendation: Runtime = gateway_app.state.upstreams["recommendation"].app.state.runtime

    async def settle(self) -> None:
        """Everything sent so far is applied by the recommendation service (and the others)."""
        await super().settle()

        async def caught_up() -> bool:
            return not any((await self.recommendation.bus.lag("recommendation", [INTERACTIONS, CUSTOMERS])).values())

        await eventually(caught_up)

    async def erase(self, customer_id: str) -> None:
        response = await self.client.delete(f"/api/customers/{customer_id}", headers=ADMIN)
        assert response.status_code == 202, response.text
        await self.settle()

    async def recommend(self, customer_id: str, **params: Any) -> dict[str, Any]:
        response = await self.client.get(f"/api/recommendations/customers/{customer_id}", params=params, headers=READER)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def related(self, product_id: str, **params: Any) -> dict[str, Any]:
        response = await self.client.get(f"/api/recommendations/products/{product_id}/related", params=params,
                                         headers=READER)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def assert_matches_reference(answer: dict[str, Any], expected: list[tuple[str, float, list[str]]]) -> None:
    assert answer["strategy"] == "co_occurrence"
    assert [i["product_id"] for i in answer["items"]] == [p for p, _, _ in expected]
    for item, (_, score, because) in zip(answer["items"], expected, strict=True):
        assert math.isclose(item["score"], score, abs_tol=1e-6)
        assert item["because"] == because


ON_DAY_0 = {c: {p: 0.0 for p in products} for c, products in {**A, **B, **Q}.items()}
__all__ += ["DAY", "ON_DAY_0", "A", "B", "Q", "assert_matches_reference", "shop_messages"]

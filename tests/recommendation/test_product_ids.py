"""Which product id a line or a view names: `product_id`, else `sku`, as trimmed text of at most
MAX_ID characters without NUL; anything else is no product (expected values worked by hand)."""
from __future__ import annotations

from typing import Any

import pytest

from services.recommendation.logic import MAX_ID, product_id


class Text(str):
    """A str subclass: read through str(), like the ints and floats."""


@pytest.mark.parametrize(("item", "expected"), [
    ({"product_id": " p1 ", "sku": "s"}, "p1"),
    ({"product_id": "", "sku": "s"}, "s"),
    ({"product_id": "   ", "sku": 42}, "42"),
    ({"product_id": True, "sku": 1.5}, "1.5"),
    ({"product_id": 0}, "0"),
    ({"product_id": Text(" t ")}, "t"),
    ({"sku": "x" * MAX_ID}, "x" * MAX_ID),
    ({"sku": "x" * (MAX_ID + 1)}, None),
    ({"sku": " " + "x" * MAX_ID + " "}, "x" * MAX_ID),
    ({"product_id": "a\x00b", "sku": "b"}, "b"),
    ({"product_id": "a\x00b"}, None),
    ({"product_id": None, "sku": None}, None),
    ({"product_id": ["a"], "sku": {"a": 1}}, None),
    ({"name": "tea"}, None),
    ("tea", None),
    (None, None),
])
def test_the_first_usable_of_product_id_and_sku(item: Any, expected: str | None) -> None:
    assert product_id(item) == expected

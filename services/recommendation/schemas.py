"""Response models of the recommendation API (docs/api.md section 10)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RecommendedItem(BaseModel):
    product_id: str
    score: float = Field(description="Higher is better; comparable within one answer only.")
    because: list[str] = Field(description="The customer's own products (bought or looked at) that led to this one, "
                               "the strongest first; empty for a popular product.")


class CustomerRecommendations(BaseModel):
    customer_id: str
    strategy: Literal["co_occurrence", "popular_in_country", "popular"] = Field(
        description="`co_occurrence`: from the customer's own orders and views; `popular_in_country`: no history, "
        "what customers of their country buy most; `popular`: what everyone buys most.")
    items: list[RecommendedItem]


class RelatedItem(BaseModel):
    product_id: str
    score: float = Field(description="Cosine over orders: together / sqrt(orders holding each).")
    together: int = Field(description="Orders holding both products (net of refunds).")


class RelatedProducts(BaseModel):
    product_id: str
    items: list[RelatedItem]

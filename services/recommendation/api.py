"""The recommendation HTTP API (docs/api.md section 10): what to offer a customer next, and what
is bought together with a product."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from services.recommendation.logic import MAX_ID
from services.recommendation.model_index import ModelIndex
from services.recommendation.schemas import (
    CustomerRecommendations,
    RecommendedItem,
    RelatedItem,
    RelatedProducts,
)
from services.recommendation.store import country_of, links
from shared.auth import ReaderDep
from shared.errors import ApiError
from shared.identity import canonical_ids
from shared.params import refuse_nul_characters
from shared.service import Runtime

router = APIRouter(tags=["recommendations"], dependencies=[Depends(refuse_nul_characters)])
HowMany = Annotated[int, Query(ge=1, le=100, description="How many products (1-100).")]
CustomerId = Annotated[str, Path(min_length=1, max_length=MAX_ID, description="A customer id (user id or anonymous id).")]
ProductId = Annotated[str, Path(min_length=1, max_length=MAX_ID, description="A product's `product_id` (or `sku`).")]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _index(request: Request) -> ModelIndex:
    index: ModelIndex = request.app.state.model_index
    return index


@router.get("/api/recommendations/customers/{customer_id}")
async def customer_recommendations(request: Request, customer_id: CustomerId, _: ReaderDep,
                                   limit: HowMany = 10) -> CustomerRecommendations:
    """Products the customer has not ordered, ranked from what they bought and looked at, each with
    the purchases that led to it; with no history, what customers of their country buy most, else
    what everyone buys most (`strategy` says which)."""
    async with _runtime(request).store.read() as session:
        model = await _index(request).current(session)
        customer = (await canonical_ids(session, links, [customer_id])).get(customer_id, customer_id)
        country = await country_of(session, customer)
    answer = model.for_customer(model.profiles.get(customer), country, limit)
    return CustomerRecommendations(customer_id=customer, strategy=answer.strategy,  # type: ignore[arg-type]
                                   items=[RecommendedItem(product_id=i.product_id, score=round(i.score, 6),
                                                          because=i.because) for i in answer.items])


@router.get("/api/recommendations/products/{product_id}/related")
async def related_products(request: Request, product_id: ProductId, _: ReaderDep, limit: HowMany = 10) -> RelatedProducts:
    """Products bought together with this one: `together` counts the orders holding both (net of
    refunds), `score` divides it by how often each is ordered, so an everyday product does not lead
    every list."""
    async with _runtime(request).store.read() as session:
        model = await _index(request).current(session)
    if product_id not in model.slot:
        raise ApiError(404, f"No product {product_id!r} in any order, view or cart add received.")
    return RelatedProducts(product_id=product_id, items=[
        RelatedItem(product_id=r.product_id, score=r.score, together=r.together) for r in model.related(product_id, limit)])

"""The ingest HTTP API: the Segment tracking endpoints, timelines, the quarantine, erasure."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from services.ingest import ingestion
from services.ingest.body import read_json, write_key_of
from services.ingest.messages import (
    BatchContextCopies,
    Message,
    Rejection,
    batch_context_problem,
    normalize,
)
from services.ingest.pipeline import Pipeline
from services.ingest.schemas import Batch, ErasureAccepted, IngestAnswer, RejectedMessage, SegmentMessage
from services.ingest.settings import IngestSettings
from shared.auth import AdminDep, ReaderDep
from shared.errors import ApiError
from shared.outbox import Outbox, write_outbox
from shared.paging import Cursor, Limit, Page, cursor_time, decode_cursor, encode_cursor
from shared.params import refuse_nul_characters
from shared.service import Runtime

router = APIRouter()
# The /api/ routes (not the tracking ones: a NUL inside properties is kept, as JSON bytes).
NO_NUL = [Depends(refuse_nul_characters)]


# The tracking endpoints read their body themselves (gzip, size limits, per-message reasons), so
# FastAPI cannot infer it; these document it. `add_body_schemas` puts the models in components.


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in (SegmentMessage, Batch):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return openapi


async def _ingest(request: Request, path_type: str | None) -> IngestAnswer:
    pipeline: Pipeline = request.app.state.pipeline
    with pipeline.request():
        return await _ingest_request(request, path_type, pipeline)


async def _ingest_request(request: Request, path_type: str | None, pipeline: Pipeline) -> IngestAnswer:
    settings: IngestSettings = request.app.state.settings
    runtime: Runtime = request.app.state.runtime
    body = await read_json(request, settings.max_request_bytes)
    key = write_key_of(request, body)
    if not key:
        raise ApiError(401, "Missing write key: use HTTP Basic with the write key as user name, or 'writeKey' in the body.", "missing_write_key")
    if key not in request.app.state.credentials.write_keys:
        raise ApiError(401, "Unknown write key.", "invalid_write_key")
    received_at = runtime.clock.now()
    messages, rejections = _normalize_all(body, path_type, received_at, settings)
    await pipeline.enqueue(runtime, messages, rejections, received_at)
    return IngestAnswer(
        accepted=len(messages),
        rejected=[RejectedMessage(index=r.index, messageId=r.message_id, reason=r.reason) for r in rejections],
    )


def _normalize_all(body: Any, path_type: str | None, received_at: datetime, settings: IngestSettings,
                   ) -> tuple[list[Message], list[Rejection]]:
    if path_type is None:
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            raise ApiError(422, "A batch is an object with a 'batch' array of messages.", details=[{"loc": ["body", "batch"]}])
        raw_messages, context, sent_at = body["batch"], body.get("context"), body.get("sentAt")
    else:
        raw_messages, context, sent_at = [body], None, None
    messages: list[Message] = []
    rejections: list[Rejection] = []
    batch_context = context if isinstance(context, dict) and context else None
    batch_problem = batch_context_problem(batch_context)
    copies = BatchContextCopies(batch_context, settings.max_request_bytes)
    for index, raw in enumerate(raw_messages):
        result = normalize(raw, index=index, received_at=received_at, path_type=path_type,
                           batch_context=batch_context, batch_sent_at=sent_at, batch_problem=batch_problem,
                           batch_context_bytes=copies.size, max_bytes=settings.max_message_bytes)
        if isinstance(result, Message) and not copies.take():
            result = Rejection(index, result.message_id, copies.refusal, raw)
        (messages if isinstance(result, Message) else rejections).append(result)  # type: ignore[arg-type]
    return messages, rejections


@router.post("/v1/batch", response_model=IngestAnswer, tags=["ingest"], openapi_extra=_body_doc(Batch))
async def batch(request: Request) -> IngestAnswer:
    """Several messages of any type in one request (what Segment SDKs send).

    Each message is validated alone: invalid ones are listed in `rejected` and kept in the
    quarantine; the rest are accepted. A `messageId` seen before (an SDK retry) is acknowledged
    and not published again.
    """
    return await _ingest(request, None)


def _single(kind: str) -> None:
    async def endpoint(request: Request) -> IngestAnswer:
        return await _ingest(request, kind)

    endpoint.__doc__ = f"One {kind} message (Segment tracking spec)."
    router.add_api_route(f"/v1/{kind}", endpoint, methods=["POST"], response_model=IngestAnswer,
                         tags=["ingest"], name=kind, openapi_extra=_body_doc(SegmentMessage))


for _kind in ("track", "identify", "page", "screen", "group", "alias"):
    _single(_kind)


@router.get("/api/customers/{customer_id}/timeline", response_model=Page[dict[str, Any]], tags=["customers"],
            dependencies=NO_NUL)
async def timeline(request: Request, customer_id: str, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[dict[str, Any]]:
    """The customer's events, newest first. An anonymous id that was linked answers with the
    timeline of the customer it now belongs to."""
    runtime: Runtime = request.app.state.runtime
    after = decode_cursor(cursor, str, str)
    async with runtime.store.read() as session:
        customer = await ingestion.resolve(session, customer_id)
        rows = await ingestion.timeline(session, customer, (cursor_time(after[0]), after[1]) if after else None, limit + 1)
    if not rows and not after:
        raise ApiError(404, f"No events for customer {customer_id!r}.")
    items = [{**orjson.loads(r.body), "customer_id": r.customer_id} for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return Page(items=items, next_cursor=encode_cursor(last.occurred_at.isoformat(), last.event_id) if last else None)


@router.get("/api/ingest/quarantine", response_model=Page[dict[str, Any]], tags=["ingest"], dependencies=NO_NUL)
async def list_quarantine(request: Request, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[dict[str, Any]]:
    """Rejected messages, newest first, each with the reason and the message as it was sent."""
    runtime: Runtime = request.app.state.runtime
    after = decode_cursor(cursor, int)
    async with runtime.store.read() as session:
        rows = await ingestion.quarantined(session, after[0] if after else None, limit + 1)
    items = [
        {"id": r.id, "received_at": r.received_at, "reason": r.reason, "message_id": r.message_id,
         "message": orjson.loads(r.raw)}
        for r in rows[:limit]
    ]
    return Page(items=items, next_cursor=encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)


@router.delete("/api/customers/{customer_id}", status_code=202, response_model=ErasureAccepted, tags=["customers"],
               dependencies=NO_NUL)
async def erase_customer(request: Request, customer_id: str, _: AdminDep) -> ErasureAccepted:
    """Erase the customer (and ids merged into it) everywhere: ingest deletes now, and every
    other service deletes on the `customers.v1` erasure event. Afterwards no API returns them."""
    runtime: Runtime = request.app.state.runtime
    await request.app.state.pipeline.drain(runtime)  # nothing pending about them lands after
    async with runtime.store.transaction() as session:
        outbox = Outbox()
        erased = await ingestion.erase(session, customer_id, runtime.clock.now(), outbox)
        await write_outbox(session, runtime.tables, outbox)
    runtime.relay.wake()
    return ErasureAccepted(customer_id=erased.customer_id, merged_ids=erased.merged_ids)

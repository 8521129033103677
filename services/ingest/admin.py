"""`/api/admin/dead-letters`: what consumers gave up on, listed and sent back (docs/api.md section 12).

Dead letters live on the bus, which every service reaches; ingest serves them (the gateway
routes `/api/admin/dead-letters*` here). The logic is `shared.dead_letters`.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from services.ingest.schemas import TOPIC_HELP, TOPIC_NAMES, DeadLetterItem, RedriveAnswer, RedriveRequest
from shared import dead_letters
from shared.auth import AdminDep
from shared.errors import ApiError
from shared.events import TOPICS
from shared.paging import Cursor, Limit, Page, decode_cursor, encode_cursor
from shared.service import Runtime

router = APIRouter(prefix="/api/admin/dead-letters", tags=["admin"])

def _item(letter: dead_letters.DeadLetter) -> DeadLetterItem:
    return DeadLetterItem(
        id=letter.id, topic=letter.topic, partition=letter.partition, offset=letter.offset, group=letter.group,
        error=letter.error, attempts=letter.attempts, key=letter.key, event_id=letter.event_id,
        event_type=letter.event_type, dead_lettered_at=letter.dead_lettered_at)


def _topic(topic: str) -> str:
    try:
        return dead_letters.source_topic(topic)
    except dead_letters.UnknownTopic as exc:
        raise ApiError(422, f"{exc}.", details=[{"loc": ["topic"], "msg": str(exc)}]) from None


def _start(cursor: str | None, topic: str | None) -> dead_letters.Position | None:
    values = decode_cursor(cursor, str, int, int)
    if values is None:
        return None
    start = dead_letters.Position(*values)
    topics = [topic] if topic else list(TOPICS)
    if start.topic.removesuffix(".dlq") not in topics or start.partition < 0 or start.offset < 0:
        raise ApiError(400, "The cursor is not one this API gave out; start again without it.", "invalid_cursor")
    return start


@router.get("", response_model=Page[DeadLetterItem])
async def list_dead_letters(
    request: Request, _: AdminDep, topic: Annotated[str | None, Query(description=TOPIC_HELP, json_schema_extra=TOPIC_NAMES)] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> Page[DeadLetterItem]:
    """Messages consumers gave up on after `BUS_MAX_ATTEMPTS` tries (or could not decode), oldest
    first per partition, with the error, the group, and where the message was. Redriven ones are
    not listed. Without `topic`, every topic's."""
    runtime: Runtime = request.app.state.runtime
    name = _topic(topic) if topic else None
    page, after = await dead_letters.list_page(runtime.bus, name, limit, _start(cursor, name))
    next_cursor = encode_cursor(after.topic, after.partition, after.offset) if after else None
    return Page(items=[_item(d) for d in page], next_cursor=next_cursor)


@router.post("/redrive", response_model=RedriveAnswer)
async def redrive_dead_letters(request: Request, body: RedriveRequest, _: AdminDep) -> RedriveAnswer:
    """Send dead letters back to their topic (all of the topic's, or the listed `ids`). Each
    consumer group processes a redriven message once: groups that had processed it skip it.
    Redriving the same ids again sends nothing (they come back in `not_found`)."""
    runtime: Runtime = request.app.state.runtime
    done = await dead_letters.redrive(runtime.bus, _topic(body.topic), body.ids)
    return RedriveAnswer(topic=done.topic, redriven=done.redriven, not_found=done.not_found)

"""Request and response models of the ingest API: the Segment tracking endpoints (docs/api.md
section 2), erasure, and the dead letters ingest serves for every service (section 12)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.bus.base import dlq_topic
from shared.events import TOPICS


class SegmentMessage(BaseModel):
    """A Segment message (tracking spec). Unknown fields are kept."""

    model_config = ConfigDict(extra="allow")
    type: str | None = Field(None, description="track, identify, page, screen, group or alias (batch only).")
    messageId: str | None = None
    userId: str | None = None
    anonymousId: str | None = None
    event: str | None = None
    name: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    timestamp: str | None = None
    sentAt: str | None = None
    previousId: str | None = None
    groupId: str | None = None


class Batch(BaseModel):
    batch: list[SegmentMessage]
    context: dict[str, Any] | None = None
    sentAt: str | None = None
    writeKey: str | None = None


class RejectedMessage(BaseModel):
    index: int
    messageId: str | None
    reason: str


class IngestAnswer(BaseModel):
    success: bool = True
    accepted: int
    rejected: list[RejectedMessage]


class ErasureAccepted(BaseModel):
    customer_id: str
    merged_ids: list[str]
    status: str = "erasure_requested"


# --- dead letters --------------------------------------------------------------------------------

TOPIC_HELP = f"A topic: {', '.join(TOPICS)} (its `.dlq` name is accepted too)."
TOPIC_NAMES = {"enum": [*TOPICS, *(dlq_topic(t) for t in TOPICS)]}  # documented; checked by admin._topic


class DeadLetterItem(BaseModel):
    id: str = Field(description="`<dlq topic>:<partition>:<offset>`: what redrive takes.")
    topic: str = Field(description="The topic the message came from, and goes back to.")
    partition: int
    offset: int
    group: str = Field(description="The consumer group (service) that gave up on it.")
    error: str
    attempts: int
    key: str = Field(description="The record's key: the customer id.")
    event_id: str | None = Field(description="The message id consumers dedupe on.")
    event_type: str | None
    dead_lettered_at: datetime


class RedriveRequest(BaseModel):
    topic: str = Field(description=TOPIC_HELP, json_schema_extra=TOPIC_NAMES)
    ids: list[Annotated[str, Field(max_length=300)]] | None = Field(
        None, max_length=10_000, description="Dead letter ids; all of the topic's when absent.")


class RedriveAnswer(BaseModel):
    topic: str
    redriven: list[str] = Field(description="Ids sent back to the topic (they are no longer listed).")
    not_found: list[str] = Field(description="Ids asked for that are not pending dead letters of the topic "
                                             "(unknown, or redriven before).")

"""The FunnelStageChanged records a recount writes without building the model are the ones
`encode` writes from the model: the same topic, key, payload bytes and headers (so the same
dedupe key), for moves forward, back, to no stage, with and without microseconds."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from services.funnel.tracking import stage_changed_record
from shared.bus.base import Record
from shared.events import FunnelStageChanged, Interaction, decode, encode

AT = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(("from_stage", "to_stage", "at", "event_id"), [
    (None, "awareness", AT, "e-1"),
    ("awareness", "interest", AT + timedelta(microseconds=123456), "e-2"),
    ("purchase", "consideration", AT + timedelta(seconds=1.5), None),
    ("loyalty", None, AT, None),
    (None, "awareness", datetime(2024, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))), "é/ü \"quoted\""),
    ("interest", "purchase", Interaction.model_validate_json(  # a time as decoded: pydantic's own UTC zone
        b'{"customer_id": "c", "event_id": "e", "type": "page", "occurred_at": "2024-03-01T12:30:00.5Z",'
        b' "received_at": "2024-03-01T12:30:00Z"}').occurred_at, "e-3"),
])
def test_the_record_is_what_encode_writes(from_stage: str | None, to_stage: str | None, at: datetime, event_id: str | None) -> None:
    order = "00001733050000000000.000000000042.001"
    model = FunnelStageChanged(customer_id="cust-ü", funnel="lifecycle", from_stage=from_stage, to_stage=to_stage,
                               at=at, event_id=event_id, order=order)
    expected = encode(model)
    written = stage_changed_record("cust-ü", "lifecycle", from_stage, to_stage, at, event_id, order)
    assert (written.topic, written.key, written.headers) == (expected.topic, expected.key, expected.headers)
    if at.utcoffset() == timedelta(0):  # times in UTC, as recounts publish: byte for byte what pydantic writes
        assert written.value == expected.value
    else:  # another zone is written as UTC: the same instant
        assert orjson.loads(written.value) | {"at": None} == orjson.loads(expected.value) | {"at": None}
    decoded = decode(Record(written.topic, 0, 0, written.key, written.value, written.headers, 0))
    assert decoded == model

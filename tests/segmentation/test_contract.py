"""What segmentation writes by a shorter way is what the longer one writes: the SegmentChanged
records `apply` builds without the model are the ones `encode` writes from it (the same topic,
key, payload bytes and headers, so the same dedupe key), for entries and exits, with and without
microseconds, in UTC and in another zone, with text that JSON escapes; and the blobs its tables
bind are what SQLAlchemy's LargeBinary binds (its times: tests/store/test_utc_datetime.py)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import LargeBinary
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect
from sqlalchemy.engine import Dialect

from services.segmentation.evaluation import changed_record
from shared.bus.base import Record
from services.segmentation.store import Blob
from shared.events import SegmentChanged, decode, encode

AT = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(("customer", "segment", "change", "at", "reason"), [
    ("cust-1", "lifecycle:prospect", "entered", AT, "no order yet"),
    ("cust-ü", "frequency:high", "exited", AT + timedelta(microseconds=123456), "5 order(s) in the last 365 days"),
    ("c", "vip", "entered", AT + timedelta(microseconds=120000), 'revenue gt 100 (is 250.0) and "quoted" é\n\t\\'),
    ("c", "rfm:champions", "exited", AT + timedelta(seconds=1.5), ""),
    ("c", "nps:promoter", "entered", datetime(2024, 3, 1, 14, 30, 0, 7, tzinfo=timezone(timedelta(hours=2))), "x"),
    ("c", "nps:detractor", "entered", datetime(2024, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))), "y"),
])
def test_the_record_is_what_encode_writes(customer: str, segment: str, change: str, at: datetime, reason: str) -> None:
    model = SegmentChanged(customer_id=customer, segment=segment, change=change, at=at, reason=reason)  # type: ignore[arg-type]
    expected = encode(model)
    for written in (changed_record(customer, segment, change, at, reason),
                    changed_record(customer, segment, change, at, reason, at.isoformat())):
        assert (written.topic, written.key, written.value, written.headers) == (
            expected.topic, expected.key, expected.value, expected.headers)
        assert decode(Record(written.topic, 0, 0, written.key, written.value, written.headers, 0)) == model


DIALECTS = [aiosqlite_dialect(), asyncpg_dialect()]  # type: ignore[no-untyped-call]


def _bind(kind: Any, dialect: Dialect) -> Any:
    return kind().dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_a_blob_binds_the_bytes_large_binary_binds(dialect: Dialect) -> None:
    ours, theirs = _bind(Blob, dialect), _bind(LargeBinary, dialect)
    for value in (b"", b'{"a":1}', bytes(range(256)), None):
        bound = ours(value)
        assert (None if bound is None else bytes(bound)) == (None if value is None else bytes(theirs(value)))

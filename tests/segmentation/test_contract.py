"""What segmentation writes by a shorter way is what the longer one writes: the SegmentChanged
records `apply` builds without the model are the ones `encode` writes from it (the same topic,
key, payload bytes and headers, so the same dedupe key), for entries and exits, with and without
microseconds, in UTC and in another zone, with text that JSON escapes; and the times its tables
bind are the text shared.store.UTCDateTime binds."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from services.segmentation.evaluation import changed_record
from services.segmentation.store import UTCTime
from shared.bus.base import Record
from shared.events import Interaction, SegmentChanged, decode, encode
from shared.store import UTCDateTime

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


class TestTimesBoundOnSQLite:
    """The segmentation tables' times (store.UTCTime) are stored as shared.store.UTCDateTime
    stores them: the same text for a time in UTC (as the clock, pydantic and SQLite give it) and
    for any other zone; a naive time refused by both. On PostgreSQL the binding is UTCDateTime's."""

    TIMES = [
        datetime(2024, 3, 1, 12, 30, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 30, 0, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 30, 5, 120000, tzinfo=timezone.utc),
        datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(0))),
        datetime(2024, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 3, 1, 23, 30, 0, 999, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2024, 3, 1, 23, 30, tzinfo=timezone(timedelta(seconds=30))),
        Interaction.model_validate({"event_id": "e", "customer_id": "c", "type": "track",
                                    "occurred_at": "2026-11-01T10:51:11.914373Z",
                                    "received_at": "2026-11-01T12:51:11+02:00"}).occurred_at,
        Interaction.model_validate({"event_id": "e", "customer_id": "c", "type": "track",
                                    "occurred_at": "2026-11-01T12:51:11.5+02:00",
                                    "received_at": "2026-11-01T12:51:11Z"}).occurred_at,
    ]

    @pytest.mark.parametrize("at", TIMES)
    def test_the_same_text_as_utc_date_time(self, at: datetime) -> None:
        ours, theirs = self.binders(sqlite.dialect())
        assert ours(at) == theirs(at)
        assert ours(None) is theirs(None) is None

    def test_a_time_bound_again_and_between_others_is_the_same_text(self) -> None:
        ours, theirs = self.binders(sqlite.dialect())
        for at in [*self.TIMES, self.TIMES[0], self.TIMES[0], None, self.TIMES[6], None, self.TIMES[6], self.TIMES[1]]:
            assert ours(at) == theirs(at)

    @pytest.mark.parametrize("stored", ["2024-03-01 12:30:00.000001", "2024-03-01 12:30:05", "0001-01-01 00:00:00.000000",
                                        "9999-12-31 23:59:59.999999", "2024-03-01", "2024-03-01T12:30:00", None])
    def test_a_stored_time_reads_as_utc_date_time_reads_it(self, stored: str | None) -> None:
        dialect = sqlite.dialect()
        ours: Any = UTCTime().dialect_impl(dialect).result_processor(dialect, None)
        theirs: Any = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
        assert ours(stored) == theirs(stored)
        if stored is not None:
            assert ours(stored).tzinfo is theirs(stored).tzinfo is UTC
            assert ours(ours(stored).isoformat(" ", "microseconds")[:-6]) == theirs(stored)  # read back as written

    def test_a_naive_time_is_refused(self) -> None:
        ours, theirs = self.binders(sqlite.dialect())
        for bind in (ours, theirs):
            with pytest.raises(ValueError, match="naive"):
                bind(datetime(2024, 3, 1, 12, 30))

    @pytest.mark.parametrize("at", TIMES)
    def test_postgresql_binds_as_utc_date_time(self, at: datetime) -> None:
        ours, theirs = self.binders(postgresql.asyncpg.dialect())  # type: ignore[attr-defined]
        if theirs is None:
            assert ours is None
        else:
            assert ours(at) == theirs(at)
            assert ours(at).tzinfo is theirs(at).tzinfo is UTC

    @staticmethod
    def binders(dialect: Any) -> tuple[Any, Any]:
        return (UTCTime().dialect_impl(dialect).bind_processor(dialect),
                UTCDateTime().dialect_impl(dialect).bind_processor(dialect))

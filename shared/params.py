"""Query and body times every API shares: UTC instants and [from, to) windows, with a 422 that
says what is wrong rather than a 500 on a time no store can hold."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.errors import ApiError

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def utc(value: datetime | None, name: str) -> datetime | None:
    """`value` with its offset, as UTC; a 422 if it has no offset or lies outside 1900-9000."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ApiError(422, f"'{name}' needs a UTC offset, e.g. 2024-05-01T00:00:00Z.", details=[{"loc": name}])
    try:
        at = value.astimezone(UTC)
    except OverflowError:
        at = EARLIEST - timedelta(days=1)
    if not EARLIEST <= at < LATEST:
        raise ApiError(422, f"'{name}' must be between 1900 and 9000.", details=[{"loc": name}])
    return at


def time_window(from_: datetime | None, to: datetime | None, now: datetime, days: float = 30) -> tuple[datetime, datetime]:
    """[from, to): `to` defaults to now, `from` to `days` before `to`; from must come first."""
    end = utc(to, "to") or now
    start = utc(from_, "from") or max(end - timedelta(days=days), EARLIEST)
    if start >= end:
        raise ApiError(422, "'from' must be before 'to'.", details=[{"loc": "from"}])
    return start, end

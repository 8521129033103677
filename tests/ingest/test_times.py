"""Message times are read the same however often a text repeats (the reader keeps what it read):
the same time, or the same reason to refuse it, as reading every text afresh."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.ingest.messages import Invalid, parse_time
from shared.params import EARLIEST, LATEST


def read_afresh(value: object, name: str) -> datetime | str | None:
    """What parse_time answers, worked out for this one value: the time, or the reason."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return f"'{name}' must be an ISO-8601 string"
    try:
        parsed = datetime.fromisoformat(value)
        at = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        return f"'{name}' {value[:40]!r} is not an ISO-8601 time"
    except OverflowError:
        at = None
    if at is None or not EARLIEST <= at < LATEST:
        return f"'{name}' {value[:40]!r} is outside the years 1900-8999 (UTC)"
    return at


def answer(value: object, name: str) -> datetime | str | None:
    try:
        return parse_time(value, name)
    except Invalid as exc:
        return str(exc)


def odd_times(rng: random.Random) -> list[object]:
    fixed: list[object] = [
        None, "", " ", 0, 1.5, True, [], {}, "now", "2026-13-01", "2026-02-30T00:00:00Z", "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00", "1899-12-31T23:59:59Z", "1900-01-01T00:00:00Z", "8999-12-31T23:59:59.999999Z",
        "9000-01-01T00:00:00Z", "2026-12-01", "2026-12-01T10:00", "2026-12-01T10:00:00.123+05:30", "2026-12-01 10:00:00",
        "20261201T100000Z", "2026-12-01T10:00:00Z\x00", "2026-12-01T10:00:00" + " " * 100, "x" * 5000,
    ]
    at = datetime(1850, 1, 1, tzinfo=UTC)
    for _ in range(300):
        moment = at + timedelta(days=rng.randrange(60_000), seconds=rng.randrange(86_400), microseconds=rng.randrange(10**6))
        offset = timedelta(minutes=rng.randrange(-14 * 60, 14 * 60 + 1))
        text = moment.astimezone(timezone(offset)).isoformat()
        fixed.append(rng.choice([text, text.replace("+00:00", "Z"), text[:19], text[:10], text[:-3]]))
    return fixed


@pytest.mark.parametrize("seed", range(3))
def test_each_time_read_as_if_afresh_even_when_repeated(seed):
    rng = random.Random(seed)
    values = odd_times(rng)
    for value in values + rng.sample(values, len(values)):  # the second time round, most are kept
        for name in ("timestamp", "sentAt"):
            assert answer(value, name) == read_afresh(value, name), value

"""How much the pipeline takes into one transaction: rows by the size of their messages."""
from __future__ import annotations

from services.ingest.pipeline import BYTES_PER_TRANSACTION, _within_bytes

MB = 1_000_000


def test_rows_are_taken_until_their_messages_would_pass_the_bound():
    half = BYTES_PER_TRANSACTION // 2
    assert _within_bytes([(1, half), (2, half), (3, 1)]) == [1, 2]


def test_small_rows_are_taken_together():
    assert _within_bytes([(i, 1_000) for i in range(1, 201)]) == list(range(1, 201))


def test_a_row_larger_than_the_bound_is_still_taken_alone():
    assert _within_bytes([(7, BYTES_PER_TRANSACTION + MB), (8, 10)]) == [7]


def test_no_rows_no_ids():
    assert _within_bytes([]) == []

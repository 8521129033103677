"""Where tests find the UCI Online Retail data (D. Chen, S. L. Sain, K. Guo, 2012; CC BY 4.0).

The whole file is `../shared/data/online_retail.csv.gz` beside a checkout that has it; a clone of
this repository alone has the slice in tests/data/ (see its README). Tests never skip for want of it.
"""
from __future__ import annotations

from pathlib import Path

from tests.helpers import ROOT

WHOLE = ROOT.parent / "shared" / "data" / "online_retail.csv.gz"
SLICE = ROOT / "tests" / "data" / "online_retail_slice.csv.gz"


def online_retail() -> Path:
    """The whole file when it is there, else the slice: for tests that read only its first rows."""
    return WHOLE if WHOLE.is_file() else SLICE


def online_retail_slice() -> Path:
    """Always the slice: for tests that load all of it (the whole file is for `make bench`)."""
    return SLICE

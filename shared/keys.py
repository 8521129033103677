"""Keys and names of what users define (segments, funnels and their stages, policies): one rule
for all, so an id that works in one API works in every other and in URLs."""
from __future__ import annotations

import re
from typing import Any

from shared.rules import RuleError

KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # used with fullmatch
KEY_RULE = "1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"


def checked_key(value: Any, where: str) -> str:
    if not isinstance(value, str) or not KEY_PATTERN.fullmatch(value):
        raise RuleError(where, KEY_RULE)
    return value


def checked_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise RuleError(where, "a name of 1-200 characters")
    return value

"""Which service answers which public path (docs/api.md section 6). The one place routing lives."""
from __future__ import annotations

import re

# First match wins; (method or None for any, path pattern, service).
ROUTES: list[tuple[str | None, re.Pattern[str], str]] = [
    (None, re.compile(r"^/v1/"), "ingest"),
    (None, re.compile(r"^/api/ingest(/|$)"), "ingest"),
    (None, re.compile(r"^/api/customers/[^/]+/timeline$"), "ingest"),
    ("DELETE", re.compile(r"^/api/customers/[^/]+$"), "ingest"),
    (None, re.compile(r"^/api/customers/[^/]+$"), "segmentation"),
    (None, re.compile(r"^/api/segments([/:]|$)"), "segmentation"),
    (None, re.compile(r"^/api/feedback(/|$)"), "segmentation"),
    (None, re.compile(r"^/api/funnels(/|$)"), "funnel"),
    (None, re.compile(r"^/api/alerts(/|$)"), "funnel"),
    (None, re.compile(r"^/api/followups(/|$)"), "followup"),
    (None, re.compile(r"^/api/recommendations(/|$)"), "recommendation"),
    (None, re.compile(r"^/api/admin/dead-letters(/|$)"), "ingest"),  # on the bus: any service could
]


def service_for(method: str, path: str) -> str | None:
    for route_method, pattern, service in ROUTES:
        if (route_method is None or route_method == method) and pattern.search(path):
            return service
    return None

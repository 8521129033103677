"""The UCI Online Retail data set as Segment messages: realistic payloads for benchmarks, tests
and the demo. D. Chen, S. L. Sain, K. Guo (2012), CC BY 4.0; found in ../shared/data/."""
from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "online_retail.csv.gz"
SOURCES = [("google", "cpc"), ("newsletter", "email"), ("facebook", "social"), ("", ""), ("bing", "organic")]


def rows(limit: int | None = None, path: Path = DATA) -> Iterator[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if limit is not None and i >= limit:
                return
            yield row


def invoice_time(row: dict[str, str]) -> str:
    # UK local time without zone in the file; taken as UTC (an hour off in summer, harmless here).
    return datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).isoformat()


def to_message(row: dict[str, str], n: int) -> dict[str, Any]:
    """One row as the track message a web SDK would send for it."""
    customer = row["CustomerID"]
    source, medium = SOURCES[n % len(SOURCES)]
    url = f"https://shop.example.co.uk/product/{row['StockCode']}" + (
        f"?utm_source={source}&utm_medium={medium}" if source else "")
    message: dict[str, Any] = {
        "type": "track",
        "messageId": f"retail-{n}",
        "event": "Order Completed" if not row["InvoiceNo"].startswith("C") else "Order Refunded",
        "properties": {
            "order_id": row["InvoiceNo"], "sku": row["StockCode"], "name": row["Description"],
            "quantity": int(row["Quantity"]), "price": float(row["UnitPrice"]),
            "revenue": round(int(row["Quantity"]) * float(row["UnitPrice"]), 2), "currency": "GBP",
        },
        "context": {
            "page": {"url": url, "path": f"/product/{row['StockCode']}", "title": row["Description"][:60]},
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
            "ip": f"81.2.{n % 250}.{n % 199}", "locale": "en-GB", "library": {"name": "analytics.js", "version": "5.2.0"},
            "traits": {"country": row["Country"]},
        },
        "timestamp": invoice_time(row),
    }
    if customer:
        message["userId"] = customer
    else:
        message["anonymousId"] = f"anon-{row['InvoiceNo']}"
    return message


def messages(limit: int, path: Path = DATA) -> list[dict[str, Any]]:
    return [to_message(row, n) for n, row in enumerate(rows(limit, path))]



"""The UCI Online Retail file (csv, csv.gz or xlsx) as Segment messages (docs/api.md section 7).

One `Order Completed` per invoice (`order_id`, `revenue` = sum of quantity x price, `products`,
`currency: "GBP"`); an invoice starting with `C` is an `Order Refunded` whose amounts are what was
refunded, positive (`revenue` and each product's `quantity`: the file writes them negative), as
Segment's e-commerce spec has them. One `identify` per customer with `traits.country`, as of the
customer's latest invoice. Every row counts as the file has it (exact duplicate rows too); rows
without a CustomerID are counted apart and not sent. InvoiceDate is UK local time without zone.

Message ids: an order's is derived from its invoice number and customer, an identify's from the
customer and country, so the same invoice imported again (this file or a later export holding it)
changes nothing.
"""
from __future__ import annotations

import csv
import functools
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from services.importer import (
    RETAIL_COLUMNS,
    ImportFileError,
    Plan,
    Planned,
    Reject,
    RowError,
    iso,
    json_size,
    message_id,
    open_text,
    utc,
)

LONDON = ZoneInfo("Europe/London")
REFUND_PREFIX = "C"
# Below ingest's 32 KB per message, with room for the batch around it.
MAX_MESSAGE_BYTES = 31_000
COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")


@dataclass
class Line:
    row: int
    product_id: str
    name: str
    quantity: int
    price: Decimal


@dataclass
class Invoice:
    number: str
    customer: str
    at: datetime
    lines: list[Line] = field(default_factory=list)


@dataclass
class Customer:
    first_invoice: str
    at: datetime
    country: str
    row: int


def read_online_retail(path: Path) -> Plan:
    plan = Plan("online-retail")
    invoices: dict[str, Invoice] = {}
    customers: dict[str, Customer] = {}
    for number, row in _rows(path):
        plan.rows += 1
        customer = row["CustomerID"]
        if not customer:
            plan.without_customer += 1
            continue
        try:
            invoice, line, at = _line(row, number)
            held = invoices.setdefault(invoice, Invoice(invoice, customer, at))
            if held.customer != customer:
                raise RowError(f"invoice {invoice} belongs to customer {held.customer}; this row names {customer}")
        except RowError as exc:
            plan.rejects.append(Reject([number], str(exc), row))
            continue
        held.lines.append(line)
        held.at = min(held.at, at)
        known = customers.setdefault(customer, Customer(invoice, at, row["Country"], number))
        if at >= known.at:
            known.at, known.country, known.row = at, row["Country"], number
    for order in invoices.values():
        known = customers[order.customer]
        if known.first_invoice == order.number:
            plan.add(_identify(order.customer, known))
        plan.add(_order(order))
    return plan


def _identify(customer: str, known: Customer) -> Planned:
    traits = {"country": known.country} if known.country else {}
    return Planned([known.row], {
        "type": "identify", "messageId": message_id("online-retail", "identify", customer, known.country),
        "userId": customer, "traits": traits, "timestamp": iso(known.at)}, known.at)


def _order(invoice: Invoice) -> Planned:
    refund = invoice.number.startswith(REFUND_PREFIX)
    sign = -1 if refund else 1
    total = sum((line.quantity * line.price for line in invoice.lines), Decimal(0))
    products = [{"product_id": line.product_id, "name": line.name, "quantity": sign * line.quantity,
                 "price": float(line.price)} for line in invoice.lines]
    properties: dict[str, Any] = {"order_id": invoice.number, "revenue": float(sign * total), "currency": "GBP",
                                  "products": products}
    _fit(properties)
    return Planned([line.row for line in invoice.lines], {
        "type": "track", "event": "Order Refunded" if refund else "Order Completed",
        "messageId": message_id("online-retail", "order", invoice.number, invoice.customer),
        "userId": invoice.customer, "properties": properties, "timestamp": iso(invoice.at)}, invoice.at)


def _fit(properties: dict[str, Any]) -> None:
    """An invoice of hundreds of lines would pass ingest's message limit: its products lose their
    names, then the last ones are left out (`products_omitted` says how many). Revenue stays whole."""
    def size() -> int:
        return json_size(properties)

    if size() <= MAX_MESSAGE_BYTES - 1000:
        return
    for product in properties["products"]:
        del product["name"]
    products = properties["products"]
    while size() > MAX_MESSAGE_BYTES - 1000:
        cut = max(1, len(products) // 10)
        del products[-cut:]
        properties["products_omitted"] = properties.get("products_omitted", 0) + cut


def _line(row: dict[str, str], number: int) -> tuple[str, Line, datetime]:
    invoice = row["InvoiceNo"]
    if not invoice:
        raise RowError("no InvoiceNo")
    try:
        quantity = int(row["Quantity"])
    except ValueError:
        raise RowError(f"bad number {row['Quantity'][:40]!r} in Quantity: a whole number is expected") from None
    try:
        price = Decimal(row["UnitPrice"])
        if not price.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise RowError(f"bad number {row['UnitPrice'][:40]!r} in UnitPrice") from None
    line = Line(number, row["StockCode"], row["Description"], quantity, price)
    return invoice, line, _invoice_time(row["InvoiceDate"])


@functools.lru_cache(maxsize=4096)  # an invoice's rows share their time; the file is in time order
def _invoice_time(value: str) -> datetime:
    """UK local time (GMT in winter, BST in summer) as UTC."""
    try:
        local = datetime.fromisoformat(value)
    except ValueError:
        raise RowError(f"bad timestamp {value[:40]!r} in InvoiceDate: YYYY-MM-DD HH:MM:SS expected") from None
    return utc(local) if local.tzinfo is not None else utc(local.replace(tzinfo=LONDON))


def _text(value: Any) -> str:
    """A spreadsheet cell as the csv writes it (17850.0 is the id 17850; a date as 2010-12-01 08:26:00)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value).strip()


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, cells by column); the header is row 1."""
    if path.name.lower().endswith(".xlsx"):
        yield from _xlsx_rows(path)
        return
    with open_text(path) as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader, [])]
        _check_header(path, header)
        at = [header.index(c) for c in COLUMNS]
        for number, cells in enumerate(reader, start=2):
            if len(cells) < len(header):
                cells += [""] * (len(header) - len(cells))
            yield number, {c: cells[i].strip() for c, i in zip(COLUMNS, at, strict=True)}


def _xlsx_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        import openpyxl  # type: ignore[import-untyped]
    except ImportError:
        raise ImportFileError(f"{path}: reading .xlsx needs openpyxl: pip install 'funnelstream[xlsx]' "
                              "(or openpyxl), or save the sheet as csv") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError and its own errors for a bad file
        raise ImportFileError(f"{path}: not a readable .xlsx file ({type(exc).__name__}: {exc})") from None
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = [_text(c) for c in next(rows, ())]
        _check_header(path, header)
        for number, cells in enumerate(rows, start=2):
            if any(c is not None for c in cells):
                cell = dict(zip(header, cells, strict=False))
                yield number, {c: _text(cell.get(c)) for c in COLUMNS}
    finally:
        book.close()


def _check_header(path: Path, header: Collection[str]) -> None:
    missing = sorted(RETAIL_COLUMNS - set(header))
    if missing:
        raise ImportFileError(f"{path}: not the Online Retail layout: no column {', '.join(missing)}")

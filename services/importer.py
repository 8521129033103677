"""Reading a history file into Segment messages for `funnelstream import` (docs/api.md section 7). No
network here: services/import_client.py sends what this module plans.

Formats: `jsonl` (one Segment message per line), `csv` (one event per row; columns name Segment
fields or are mapped with `--map COLUMN=FIELD`) and `online-retail` (the UCI Online Retail file,
services/importer_retail.py). Every message gets a message id derived from the file's rows, so
importing the same file again changes nothing anywhere. Row numbers are the ones an editor or a
spreadsheet shows: the csv header is row 1, the first jsonl line is row 1.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

FORMATS = ("csv", "jsonl", "online-retail")
MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
# Fields a csv column may name as they are; nested ones are `properties.X`, `traits.X`, `context.X`.
TOP_FIELDS = ("type", "event", "name", "userId", "anonymousId", "timestamp", "messageId", "previousId", "groupId")
NESTED_FIELDS = ("properties", "traits", "context")
SKIP = "-"  # --map COLUMN=- leaves the column out
# Amounts services add up: a cell that should hold one and does not rejects its row.
AMOUNTS = ("properties.revenue", "properties.total", "properties.value", "properties.price", "properties.quantity")
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
# Message ids are uuid5 in this namespace of a text naming the row(s): the same file, the same ids.
NAMESPACE = uuid.UUID("5f3b0c1e-7a52-4d8e-9a61-2f6c5e0b9d47")
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)
RETAIL_COLUMNS = {"InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"}


class ImportFileError(ValueError):
    """The file or the options cannot be imported at all (one line; exit 2)."""


class RowError(ValueError):
    """One row cannot be imported; the others go in."""


@dataclass
class Planned:
    """One message to send and the rows of the file it comes from."""
    rows: list[int]
    message: dict[str, Any]
    at: datetime | None  # its timestamp, to shift


@dataclass
class Reject:
    rows: list[int]
    reason: str
    data: Any = None
    message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "reason": self.reason}
        if self.message_id:
            out["messageId"] = self.message_id
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass
class Plan:
    """What a file holds: the messages in the order they are sent, and what could not be read."""
    format: str
    rows: int = 0
    messages: list[Planned] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    without_customer: int = 0  # online-retail rows without a CustomerID: counted, not sent

    def add(self, planned: Planned) -> None:
        self.messages.append(planned)


def message_id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "\x1f".join(str(p) for p in parts)))


# -- options --------------------------------------------------------------------------------------
def parse_mapping(items: list[str]) -> dict[str, str]:
    """`COLUMN=FIELD` pairs; FIELD is a Segment field, `properties.X`, `traits.X`, `context.X` or `-`."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column.strip() or not target.strip():
            raise ImportFileError(f"--map {item!r} is not COLUMN=FIELD (e.g. --map order_total=properties.revenue)")
        target = target.strip()
        if not valid_field(target):
            raise ImportFileError(f"--map {item!r}: {target!r} is no Segment field; use one of {', '.join(TOP_FIELDS)}, "
                                  "properties.X, traits.X, context.X, or - to leave the column out")
        mapping[column.strip()] = target
    return mapping


def valid_field(name: str) -> bool:
    if name in TOP_FIELDS or name == SKIP:
        return True
    head, _, rest = name.partition(".")
    return head in NESTED_FIELDS and bool(rest) and all(rest.split("."))


def parse_shift_to(value: str, now: datetime) -> datetime:
    if value == "now":
        return now.replace(microsecond=0)
    try:
        return utc(datetime.fromisoformat(value))
    except ValueError:
        raise ImportFileError(f"--shift-to {value!r} is neither 'now' nor an ISO-8601 date or time") from None


def utc(at: datetime) -> datetime:
    """Times without a zone are UTC, as ingest reads them."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- files ----------------------------------------------------------------------------------------
def open_text(path: Path) -> IO[str]:
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFileError(f"{path}: {exc.strerror or exc}") from None


def fingerprint(path: Path) -> str:
    """The file's sha256: a resume point holds only for the file it was made on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    """By the name, then by the csv header (the UCI columns mean online-retail)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".xlsx"):
        return "online-retail"
    if name.endswith(".csv"):
        with open_text(path) as f:
            header = next(csv.reader(f), [])
        return "online-retail" if RETAIL_COLUMNS <= set(header) else "csv"
    raise ImportFileError(f"{path}: cannot tell the format from the name; pass --format csv, jsonl or online-retail")


def read(path: Path, fmt: str, mapping: dict[str, str]) -> Plan:
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ImportFileError(f"unknown format {fmt!r}; use auto, {', '.join(FORMATS)}")
    if mapping and fmt != "csv":
        raise ImportFileError(f"--map applies to csv files; this one is read as {fmt}")
    try:
        if fmt == "jsonl":
            return read_jsonl(path)
        if fmt == "csv":
            return read_csv(path, mapping)
        from services.importer_retail import read_online_retail
        return read_online_retail(path)
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError, csv.Error) as exc:
        raise ImportFileError(f"{path}: cannot be read: {exc}") from None


# -- jsonl ----------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> Plan:
    plan = Plan("jsonl")
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            plan.rows += 1
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise RowError("a line must hold one JSON object (a Segment message)")
                plan.add(checked(raw, "jsonl", number, line.strip()))
            except json.JSONDecodeError as exc:
                plan.rejects.append(Reject([number], f"not JSON: {exc.msg} at column {exc.colno}", line.strip()[:2000]))
            except RowError as exc:
                plan.rejects.append(Reject([number], str(exc), raw))
    return plan


def checked(message: dict[str, Any], fmt: str, row: int, content: str) -> Planned:
    """What every message needs before it is worth sending; a message id if it has none."""
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise RowError(f"type must be one of {', '.join(MESSAGE_TYPES)}; got {kind!r}")
    if not message.get("userId") and not message.get("anonymousId"):
        raise RowError("no customer id: userId or anonymousId is required")
    if kind == "track" and not message.get("event"):
        raise RowError("a track needs an event name")
    at = timestamp_of(message.get("timestamp"))
    if not message.get("messageId"):
        message["messageId"] = message_id(fmt, row, content)
    return Planned([row], message, at)


def timestamp_of(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowError(f"bad timestamp {value!r}: an ISO-8601 string is expected")
    try:
        at = utc(datetime.fromisoformat(value))
    except ValueError:
        raise RowError(f"bad timestamp {value[:40]!r}: not an ISO-8601 time") from None
    if not EARLIEST <= at < LATEST:
        raise RowError(f"bad timestamp {value[:40]!r}: outside the years 1900-8999")
    return at


# -- csv ------------------------------------------------------------------------------------------
def read_csv(path: Path, mapping: dict[str, str]) -> Plan:
    plan = Plan("csv")
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ImportFileError(f"{path}: empty file (a header row naming the columns is expected)")
        fields = column_fields(header, mapping)
        for number, cells in enumerate(reader, start=2):
            plan.rows += 1
            try:
                plan.add(checked(csv_message(fields, cells), "csv", number, "\x1e".join(cells)))
            except RowError as exc:
                plan.rejects.append(Reject([number], str(exc), dict(zip(header, cells, strict=False))))
    return plan


def column_fields(header: list[str], mapping: dict[str, str]) -> list[str]:
    missing = [c for c in mapping if c not in header]
    if missing:
        raise ImportFileError(f"--map names {', '.join(map(repr, missing))}, not a column of the file "
                              f"(its columns: {', '.join(header)})")
    fields = [mapping.get(c, c.strip()) for c in header]
    unknown = [c for c, f in zip(header, fields, strict=True) if not valid_field(f)]
    if unknown:
        raise ImportFileError(f"column {unknown[0]!r} names no Segment field: map it with --map "
                              f"'{unknown[0]}=properties.{unknown[0]}' (or any field), or --map '{unknown[0]}=-' to leave it out")
    return fields


def csv_message(fields: list[str], cells: list[str]) -> dict[str, Any]:
    if len(cells) != len(fields):
        raise RowError(f"{len(cells)} cells where the header names {len(fields)} columns")
    message: dict[str, Any] = {}
    for name, cell in zip(fields, cells, strict=True):
        if name == SKIP or cell == "":
            continue
        if "." not in name:
            message[name] = cell
            continue
        value = number(cell)
        if name in AMOUNTS and isinstance(value, str):
            raise RowError(f"bad number {cell[:40]!r} in {name}")
        place(message, name.split("."), value)
    if "type" not in message:  # a file of one kind of event may leave the type out
        message["type"] = "track" if "event" in message else "identify"
    return message


def number(cell: str) -> int | float | str:
    """A cell that reads as a number is one (`007` and `1,5` stay text)."""
    if not NUMBER.fullmatch(cell):
        return cell
    value = float(cell)
    return int(cell) if re.fullmatch(r"-?[0-9]+", cell) else value


def place(message: dict[str, Any], path: list[str], value: Any) -> None:
    node = message
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise RowError(f"{'.'.join(path)} conflicts with another column holding {key!r}")
        node = child
    node[path[-1]] = value


# -- time -----------------------------------------------------------------------------------------
def shift(plan: Plan, target: datetime) -> timedelta:
    """Move every message so the latest lands at `target`, the gaps between them unchanged."""
    times = [p.at for p in plan.messages if p.at is not None]
    if not times:
        return timedelta(0)
    delta = target - max(times)
    for planned in plan.messages:
        if planned.at is not None:
            planned.at += delta
            planned.message["timestamp"] = iso(planned.at)
    return delta


def batches(items: list[Planned], max_messages: int, max_bytes: int) -> Iterator[tuple[int, list[Planned]]]:
    """(index of the first, the batch): at most `max_messages` and about `max_bytes` of JSON each."""
    start, size, batch = 0, 0, list[Planned]()
    for index, item in enumerate(items):
        length = json_size(item.message) + 1
        if batch and (len(batch) == max_messages or size + length > max_bytes):
            yield start, batch
            start, size, batch = index, 0, []
        batch.append(item)
        size += length
    if batch:
        yield start, batch


def json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (orjson; json for what it refuses, such as huge integers)."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())

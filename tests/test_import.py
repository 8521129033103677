"""`funnelstream import` as a user runs it: the gateway as its own process (`python -m
services.gateway`, every service in it), the command as a subprocess pointed at it. Profiles after
an import equal what the test works out from the file itself (csv + Decimal); a second import,
and a `--resume` after an interruption, add nothing. Bad input: one line and exit 2."""
from __future__ import annotations

import csv
import gzip
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import READER, ROOT, free_port, start_process, stop_process, wait_until_healthy
from tests.retail_data import online_retail_slice

CONSUMERS = ("segmentation", "funnel")  # the services that read interactions.v1


class Gateway:
    """`make run` in miniature: one process, a DATA_DIR of its own, a free port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = data_dir / "gateway.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = start_process("services.gateway", {
            "PORT": str(self.port), "DATA_DIR": str(data_dir), "API_KEYS": "", "WRITE_KEYS": "",
            "GATEWAY_RATE_LIMIT_API": "0"}, log)  # the check reads thousands of customers back to back
        wait_until_healthy(self.url, self.process, log)
        self.http = httpx.Client(base_url=self.url, headers=READER, timeout=30)

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)

    def processed(self) -> dict[str, float]:
        """interactions.v1 records each consumer has handled (skipped duplicates included)."""
        counts = dict.fromkeys(CONSUMERS, 0.0)
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith("funnelstream_bus_messages_processed_total{") and 'topic="interactions.v1"' in line:
                service = line.split('service="')[1].split('"')[0]
                counts[service] = float(line.rsplit(" ", 1)[1])
        return counts

    def wait_processed(self, records: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while min(self.processed().values()) < records:
            assert time.monotonic() < deadline, f"consumers at {self.processed()}, waiting for {records}"
            time.sleep(0.2)
        time.sleep(0.5)  # anything beyond `records` (a republished duplicate) would show by now

    def profile(self, customer: str) -> dict[str, Any]:
        response = self.http.get(f"/api/customers/{customer}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def timeline_length(self, customer: str) -> int:
        count, cursor = 0, None
        while True:
            response = self.http.get(f"/api/customers/{customer}/timeline",
                                     params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
            assert response.status_code == 200, response.text
            page = response.json()
            count += len(page["items"])
            if not (cursor := page["next_cursor"]):
                return count

    def state(self, customers: list[str]) -> dict[str, tuple[int, int, float, int]]:
        """Per customer: events, orders, revenue (to the cent), timeline length."""
        out = {}
        for customer in customers:
            p = self.profile(customer)
            out[customer] = (p["event_count"], p["order_count"], round(p["revenue"], 2), self.timeline_length(customer))
        return out


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = Gateway(tmp_path_factory.mktemp("gateway"))
    yield running
    running.stop()


def funnelstream(*args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    """The console script's code as a subprocess (stderr is not a terminal: plain progress lines)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELSTREAM_")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**clean, "PYTHONPATH": str(ROOT), **env})


def imported(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "imported " in result.stderr, result.stderr
    return result.stderr


@dataclass
class Reference:
    """What the profiles must say, worked out from the file by the test."""
    events: Counter[str]
    orders: Counter[str]
    revenue: dict[str, Decimal]

    def expected(self) -> dict[str, tuple[int, int, float, int]]:
        return {c: (n, self.orders[c], round(float(self.revenue[c]), 2), n) for c, n in self.events.items()}

    @property
    def total(self) -> int:
        return sum(self.events.values())


def rejects(path: Path) -> list[dict[str, Any]]:
    file = path.with_name(path.name + ".rejects.jsonl")
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


# -- csv and jsonl --------------------------------------------------------------------------------
def shop_rows(prefix: str, seed: int, count: int = 240) -> list[dict[str, Any]]:
    """Visits, views and orders of a dozen customers over three years, in no particular order."""
    rng = random.Random(seed)
    start = datetime(2021, 1, 1, tzinfo=UTC)
    rows = []
    for n in range(count):
        customer = f"{prefix}-{rng.randrange(12)}"
        at = start + timedelta(minutes=rng.randrange(3 * 365 * 24 * 60))
        kind = rng.choice(["order", "order", "view", "identify"])
        amount = Decimal(rng.randrange(100, 50_000)) / 100
        rows.append({"customer": customer, "at": at, "kind": kind, "amount": amount, "n": n})
    return rows


def reference_of(rows: list[dict[str, Any]]) -> Reference:
    events: Counter[str] = Counter()
    orders: Counter[str] = Counter()
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        events[row["customer"]] += 1
        if row["kind"] == "order":
            orders[row["customer"]] += 1
            revenue[row["customer"]] += row["amount"]
    return Reference(events, orders, revenue)


def write_csv(path: Path, rows: list[dict[str, Any]], bad: list[list[str]]) -> None:
    """Column names of the shop's own export, mapped with --map."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["customer", "kind", "what", "amount", "when", "country", "note"])
        for row in rows:
            kind = "identify" if row["kind"] == "identify" else "track"
            what = {"order": "Order Completed", "view": "Product Viewed"}.get(row["kind"], "")
            amount = str(row["amount"]) if row["kind"] == "order" else ""
            out.writerow([row["customer"], kind, what, amount, row["at"].isoformat(), "GB", f"row {row['n']}"])
        out.writerows(bad)


CSV_MAP = ["--map", "customer=userId", "--map", "kind=type", "--map", "what=event", "--map",
           "amount=properties.revenue", "--map", "when=timestamp", "--map", "country=traits.country",
           "--map", "note=-"]


class TestCsvWithMapping:
    def test_profiles_equal_the_file_and_a_second_import_adds_nothing(self, gateway, tmp_path):
        rows = shop_rows("csv", seed=1)
        path = tmp_path / "shop-export.csv"
        write_csv(path, rows, bad=[["csv-0", "track", "Order Completed", "12,50", "2022-01-01T00:00:00Z", "GB", ""],
                                   ["", "track", "Order Completed", "3", "2022-01-01T00:00:00Z", "GB", ""],
                                   ["csv-1", "track", "Order Completed", "3", "last tuesday", "GB", ""]])
        reference = reference_of(rows)
        before = min(gateway.processed().values())

        out = imported(funnelstream("import", str(path), "--url", gateway.url, *CSV_MAP))
        assert f"{len(rows) + 3} rows -> {len(rows)} events" in out and "rejected 3" in out
        assert [(r["rows"], r["reason"].split(" ")[:2]) for r in rejects(path)] == [
            ([len(rows) + 2], ["bad", "number"]), ([len(rows) + 3], ["no", "customer"]),
            ([len(rows) + 4], ["bad", "timestamp"])]
        gateway.wait_processed(before + reference.total)
        first = gateway.state(list(reference.events))
        assert first == reference.expected()

        imported(funnelstream("import", str(path), "--url", gateway.url, *CSV_MAP))
        gateway.wait_processed(before + reference.total)
        assert gateway.state(list(reference.events)) == first
        assert min(gateway.processed().values()) == before + reference.total  # nothing published again


class TestJsonl:
    def test_profiles_equal_the_file_with_bad_lines_rejected_by_line_number(self, gateway, tmp_path):
        rows = shop_rows("jl", seed=2)
        lines = []
        for row in rows:
            message: dict[str, Any] = {"type": "identify" if row["kind"] == "identify" else "track",
                                       "userId": row["customer"], "timestamp": row["at"].isoformat()}
            if row["kind"] == "order":
                message |= {"event": "Order Completed", "properties": {"revenue": float(row["amount"])}}
            elif row["kind"] == "view":
                message |= {"event": "Product Viewed", "properties": {"product_id": f"p{row['n'] % 7}"}}
            if row["n"] % 3 == 0:
                message["messageId"] = f"jl-msg-{row['n']}"  # the SDK's own id, kept
            lines.append(json.dumps(message))
        lines[10:10] = ["{oops", json.dumps({"type": "track", "event": "x", "userId": "jl-0", "timestamp": "soon"})]
        path = tmp_path / "events.jsonl"
        path.write_text("\n".join(lines) + "\n")
        reference = reference_of(rows)
        before = min(gateway.processed().values())

        out = imported(funnelstream("import", str(path), "--url", gateway.url))
        assert "(jsonl)" in out and "rejected 2" in out
        assert [r["rows"] for r in rejects(path)] == [[11], [12]]
        gateway.wait_processed(before + reference.total)
        assert gateway.state(list(reference.events)) == reference.expected()
        timeline = gateway.http.get(f"/api/customers/{rows[3]['customer']}/timeline", params={"limit": 1000}).json()
        assert "jl-msg-3" in {item["event_id"] for item in timeline["items"]}  # the file's own id

        imported(funnelstream("import", str(path), "--url", gateway.url))
        gateway.wait_processed(before + reference.total)
        assert gateway.state(list(reference.events)) == reference.expected()


# -- Online Retail --------------------------------------------------------------------------------
def retail_reference(path: Path) -> Reference:
    """From the file: orders are invoices not starting with C, revenue their quantity x price,
    events every invoice plus one identify per customer; rows without CustomerID left out."""
    invoices: dict[str, set[str]] = defaultdict(set)
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            customer = row["CustomerID"]
            if not customer:
                continue
            invoices[customer].add(row["InvoiceNo"])
            if not row["InvoiceNo"].startswith("C"):
                revenue[customer] += Decimal(row["Quantity"]) * Decimal(row["UnitPrice"])
    events = Counter({c: len(i) + 1 for c, i in invoices.items()})
    orders = Counter({c: sum(not n.startswith("C") for n in i) for c, i in invoices.items()})
    return Reference(events, orders, revenue)


@pytest.fixture
def retail_copy(tmp_path: Path) -> Path:
    """The slice where the command may write its rejects and resume point beside it."""
    copy = tmp_path / "online_retail.csv.gz"
    copy.write_bytes(online_retail_slice().read_bytes())
    return copy


class TestOnlineRetail:
    def test_profiles_equal_the_file_and_a_second_import_adds_nothing(self, tmp_path, retail_copy):
        reference = retail_reference(retail_copy)
        gateway = Gateway(tmp_path / "gateway")
        try:
            out = imported(funnelstream("import", str(retail_copy), "--url", gateway.url))
            assert f"27,312 rows -> {reference.total:,} events" in out
            assert "451 rows without a CustomerID" in out and "rejected 0" in out
            gateway.wait_processed(reference.total)
            first = gateway.state(list(reference.events))
            assert first == reference.expected()
            summer = gateway.profile("17483")  # first invoice 2011-06-09 19:40:00 UK time, BST
            assert summer["traits"] == {"country": "United Kingdom"} and summer["first_seen"] == "2011-06-09T18:40:00Z"

            imported(funnelstream("import", str(retail_copy), "--url", gateway.url))
            gateway.wait_processed(reference.total)
            assert gateway.state(list(reference.events)) == first
            assert min(gateway.processed().values()) == reference.total
        finally:
            gateway.stop()

    def test_an_interrupted_import_resumed_ends_as_one_that_was_not(self, tmp_path, retail_copy):
        reference = retail_reference(retail_copy)
        state = retail_copy.with_name(retail_copy.name + ".import-state.json")
        gateway = Gateway(tmp_path / "gateway")
        try:
            out = imported(funnelstream("import", str(retail_copy), "--url", gateway.url, "--limit", "600"))
            assert "--resume" in out and json.loads(state.read_text())["acknowledged"] == 600

            interrupted = subprocess.Popen(  # killed once a batch more is acknowledged
                [sys.executable, "-m", "services.cli", "import", str(retail_copy), "--url", gateway.url, "--resume",
                 "--batch-size", "20"],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while json.loads(state.read_text())["acknowledged"] == 600 and interrupted.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            interrupted.kill()
            interrupted.wait()
            assert 600 < json.loads(state.read_text())["acknowledged"] < reference.total  # killed half way

            out = imported(funnelstream("import", str(retail_copy), "--url", gateway.url, "--resume"))
            assert not state.exists()
            gateway.wait_processed(reference.total)
            assert gateway.state(list(reference.events)) == reference.expected()
            assert min(gateway.processed().values()) == reference.total
        finally:
            gateway.stop()


# -- time -----------------------------------------------------------------------------------------
class TestShiftTo:
    @pytest.mark.parametrize("target", ["2031-01-02T03:04:05+00:00", "now"])
    def test_the_latest_event_lands_at_the_target_and_the_gaps_stay(self, gateway, tmp_path, target):
        customer = f"shift-{target[:4]}"
        times = ["2015-03-01T10:00:00Z", "2015-02-01T10:00:00Z", "2016-07-15T12:30:00Z"]
        path = tmp_path / "old.jsonl"
        path.write_text("".join(json.dumps({"type": "track", "event": "Product Viewed", "userId": customer,
                                            "timestamp": t}) + "\n" for t in times))
        before = min(gateway.processed().values())
        sent_at = datetime.now(UTC)
        imported(funnelstream("import", str(path), "--url", gateway.url, "--shift-to", target))
        gateway.wait_processed(before + 3)
        items = gateway.http.get(f"/api/customers/{customer}/timeline").json()["items"]
        got = sorted(datetime.fromisoformat(i["occurred_at"]) for i in items)
        latest = datetime.fromisoformat(target) if target != "now" else got[-1]
        if target == "now":
            assert sent_at - timedelta(seconds=60) < latest <= datetime.now(UTC)
        assert got[-1] == latest
        original = sorted(datetime.fromisoformat(t) for t in times)
        assert [latest - at for at in got] == [original[-1] - at for at in original]


# -- bad input ------------------------------------------------------------------------------------
class TestBadInput:
    """A usage, file or connection error: one line on stderr, exit 2, nothing sent."""

    def one_line(self, *args: str) -> str:
        result = funnelstream("import", *args, timeout=60)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("funnelstream import: error: ")
        return line.removeprefix("funnelstream import: error: ")

    def test_missing_file(self, tmp_path):
        assert self.one_line(str(tmp_path / "nope.csv")) == f"{tmp_path / 'nope.csv'}: no such file"

    def test_unknown_format(self, tmp_path):
        (tmp_path / "a.csv").write_text("event,userId\nx,a\n")
        assert self.one_line(str(tmp_path / "a.csv"), "--format", "parquet").startswith("unknown format 'parquet'")
        (tmp_path / "a.txt").write_text("x")
        assert "cannot tell the format" in self.one_line(str(tmp_path / "a.txt"))

    def test_bad_mapping(self, tmp_path):
        (tmp_path / "a.csv").write_text("event,who\nx,a\n")
        assert self.one_line(str(tmp_path / "a.csv"), "--map", "who").startswith("--map 'who' is not COLUMN=FIELD")
        assert "is no Segment field" in self.one_line(str(tmp_path / "a.csv"), "--map", "who=user")
        assert "not a column of the file" in self.one_line(str(tmp_path / "a.csv"), "--map", "whom=userId")
        assert "names no Segment field" in self.one_line(str(tmp_path / "a.csv"))

    def test_bad_shift_to(self, tmp_path):
        (tmp_path / "a.jsonl").write_text("{}\n")
        assert "--shift-to 'tomorrow'" in self.one_line(str(tmp_path / "a.jsonl"), "--shift-to", "tomorrow")

    def test_server_down(self, tmp_path):
        path = tmp_path / "a.jsonl"
        path.write_text(json.dumps({"type": "track", "event": "x", "userId": "a"}) + "\n")
        url = f"http://127.0.0.1:{free_port()}"
        assert self.one_line(str(path), "--url", url) == f"cannot reach {url}: nothing accepts connections there (is the gateway running?)"
        assert not path.with_name("a.jsonl.import-state.json").exists()

    def test_wrong_write_key(self, gateway, tmp_path):
        path = tmp_path / "a.jsonl"
        path.write_text(json.dumps({"type": "track", "event": "x", "userId": "nobody-401"}) + "\n")
        line = self.one_line(str(path), "--url", gateway.url, "--write-key", "wrong")
        assert line.startswith(f"{gateway.url} refuses the write key (401")
        assert gateway.http.get("/api/customers/nobody-401").status_code == 404

    def test_the_write_key_and_url_from_the_environment(self, gateway, tmp_path):
        path = tmp_path / "a.jsonl"
        path.write_text(json.dumps({"type": "track", "event": "x", "userId": "env-1"}) + "\n")
        result = funnelstream("import", str(path), FUNNELSTREAM_URL=gateway.url, FUNNELSTREAM_WRITE_KEY="wrong")
        assert result.returncode == 2 and "refuses the write key" in result.stderr
        imported(funnelstream("import", str(path), FUNNELSTREAM_URL=gateway.url))

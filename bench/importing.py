"""`funnelstream import` as a user meets it: the whole Online Retail file, then the demo shop.

The gateway runs as its own process (`python -m services.gateway`: every service in it, SQLite
stores and the embedded bus in a fresh DATA_DIR, a free port) and the console script's code as a
subprocess pointed at it, with its default batches. Timed from the command's start:
- the import: until the command exits (rows read / s, events sent / s);
- reflected: until every service has applied the whole file. Exact and cheap: every consumer
  group's lag on the bus is 0 and ingest's inbox and every service's outbox are empty (an event on
  its way is in one of them), at two checks in a row with nothing published in between. Each
  service's own time is the start of its last stretch with nothing pending.
The answers are then checked against a reference the bench works out from the file itself (csv or
json, Decimal): order count, revenue and timeline of a sample of buyers; the lifecycle funnel
report counting every customer; and the follow-ups orders trigger: an open `winback_churned` for
exactly the buyers whose last order is over 180 days old and `welcome_new` for exactly those with
one order in the last 90 days.
Baseline: reading and mapping the same file into batches of messages in this process (what the
command does before it sends: the ceiling the client can reach).

The demo shop is generated as `make demo` does, with BENCH_IMPORT_DEMO_CUSTOMERS customers
(default 2,000, a tenth of the demo's own 20,000, ~12k events): the services take several minutes
over the whole shop on a 2-core machine, and `make bench` should stay near 5 minutes. Set it to
20000 for the demo as `make demo` loads it.
"""
from __future__ import annotations

import asyncio
import csv
import gzip
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from services import importer
from services.demo import shop
from shared.bus.embedded import EmbeddedBus
from tests.helpers import READER, ROOT, free_port, start_process, stop_process, wait_until_healthy
from tests.retail_data import online_retail

SERVICES = ("ingest", "segmentation", "funnel", "followup", "recommendation")
BACKLOG_TABLES = {"ingest": ("inbox", "packed_inbox", "outbox"), "segmentation": ("outbox",), "funnel": ("outbox",),
                  "followup": ("outbox",), "recommendation": ("outbox",)}
CONSUMERS = ("segmentation", "funnel", "followup", "recommendation")  # each has a consumer group on the bus
PROBE_GROUP = "bench-importing-probe"  # never commits: its lag is the end offsets
POLL_SECONDS = 0.5
SAMPLE = 200  # buyers whose profile and timeline are checked one by one
TIMEOUT_SECONDS = 1800
DEMO_CUSTOMERS = int(os.environ.get("BENCH_IMPORT_DEMO_CUSTOMERS", "2000"))
BATCH_MESSAGES, BATCH_BYTES = 250, 400_000  # the command's defaults
# Lifecycle thresholds of docs/api.md section 3, and a margin around them: a buyer that close to
# one may or may not have been moved by the scheduled pass yet.
NEW_DAYS, CHURNED_DAYS, MARGIN = 90, 180, timedelta(hours=1)
LONDON = ZoneInfo("Europe/London")


@dataclass
class Reference:
    """What the services must say once they have the whole file, from the file itself."""
    rows: int = 0
    events: int = 0
    customers: set[str] = field(default_factory=set)  # every one the funnel report counts
    timeline: Counter[str] = field(default_factory=Counter)  # events per id a timeline answers for
    orders: Counter[str] = field(default_factory=Counter)
    revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    last_order: dict[str, datetime] = field(default_factory=dict)
    first: datetime = datetime.max.replace(tzinfo=UTC)
    last: datetime = datetime.min.replace(tzinfo=UTC)

    def seen(self, at: datetime) -> None:
        self.first, self.last = min(self.first, at), max(self.last, at)

    def ordered(self, customer: str, at: datetime, revenue: Decimal) -> None:
        self.orders[customer] += 1
        self.revenue[customer] += revenue
        self.last_order[customer] = max(self.last_order.get(customer, at), at)

    def open_followups(self, now: datetime) -> dict[str, set[str]]:
        """The buyers each order-triggered policy has an open follow-up for (those near a threshold left out)."""
        wanted: dict[str, set[str]] = {"winback_churned": set(), "welcome_new": set()}
        for customer, last in self.last_order.items():
            age = now - last
            if abs(age - timedelta(days=CHURNED_DAYS)) < MARGIN or abs(age - timedelta(days=NEW_DAYS)) < MARGIN:
                continue
            if age > timedelta(days=CHURNED_DAYS):
                wanted["winback_churned"].add(customer)
            elif age <= timedelta(days=NEW_DAYS) and self.orders[customer] == 1:
                wanted["welcome_new"].add(customer)
        return wanted

    def near_thresholds(self, now: datetime) -> set[str]:
        return {c for c, last in self.last_order.items()
                if min(abs(now - last - timedelta(days=d)) for d in (NEW_DAYS, CHURNED_DAYS)) < MARGIN}


def retail_reference(path: Path) -> Reference:
    """UCI Online Retail: one order per invoice not starting with C (revenue: quantity x price),
    a refund per C invoice, one identify per customer; rows without CustomerID are not sent."""
    ref = Reference()
    invoices: dict[str, set[str]] = defaultdict(set)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            ref.rows += 1
            customer, invoice = row["CustomerID"].strip(), row["InvoiceNo"].strip()
            if not customer:
                continue
            at = datetime.fromisoformat(row["InvoiceDate"]).replace(tzinfo=LONDON).astimezone(UTC)
            ref.seen(at)
            invoices[customer].add(invoice)
            if not invoice.startswith("C"):
                ref.revenue[customer] += Decimal(row["Quantity"]) * Decimal(row["UnitPrice"])
                ref.last_order[customer] = max(ref.last_order.get(customer, at), at)
    ref.orders = +Counter({c: sum(not n.startswith("C") for n in i) for c, i in invoices.items()})
    ref.customers = set(invoices)
    ref.timeline = Counter({c: len(i) + 1 for c, i in invoices.items()})
    ref.events = sum(ref.timeline.values())
    return ref


def shop_reference(path: Path) -> Reference:
    """The demo shop: every message has the visitor's anonymousId (identified ones a userId too,
    one to one); orders are `Order Completed` with the userId and a revenue."""
    ref = Reference()
    person: dict[str, str] = {}  # anonymousId -> the id a timeline is asked for (userId once known)
    counts: Counter[str] = Counter()
    with open(path, "rb") as lines:
        for line in lines:
            message = orjson.loads(line)
            ref.rows += 1
            at = datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))
            ref.seen(at)
            anonymous = message["anonymousId"]
            counts[anonymous] += 1
            if message.get("userId"):
                person[anonymous] = message["userId"]
            if message["type"] in ("page", "track"):
                ref.customers.add(anonymous)
            if message.get("event") == "Order Completed":
                ref.ordered(message["userId"], at, Decimal(str(message["properties"]["revenue"])))
    ref.events = ref.rows
    ref.timeline = Counter({person.get(a, a): n for a, n in counts.items()})
    return ref


# -- the ceiling: what the command does before it sends -----------------------------------------
def ceiling_rows_per_s(path: Path, rows: int) -> float:
    started = time.perf_counter()
    plan = importer.read(path, "auto", {})
    for _ in importer.batches(plan.messages, BATCH_MESSAGES, BATCH_BYTES):
        pass
    return rows / (time.perf_counter() - started)


# -- the live system ------------------------------------------------------------------------------
class Gateway:
    """`make run` in a fresh DATA_DIR on a free port (`env`: more settings, e.g. GATEWAY_PROCESSES)."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "gateway.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = start_process("services.gateway", {
            "PORT": str(self.port), "DATA_DIR": str(data_dir), "API_KEYS": "", "WRITE_KEYS": "",
            "LOG_LEVEL": "WARNING", "GATEWAY_RATE_LIMIT_API": "0", **(env or {})}, self.log)  # checks read back fast
        try:
            wait_until_healthy(self.url, self.process, self.log)
        except BaseException:
            stop_process(self.process)
            raise
        self.http = httpx.Client(base_url=self.url, headers=READER, timeout=120)

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)

    def consumer_groups(self) -> dict[str, tuple[str, list[str]]]:
        return consumer_groups(lambda: [self.http.get("/metrics").text])


def consumer_groups(pages: Callable[[], list[str]]) -> dict[str, tuple[str, list[str]]]:
    """group -> (service, topics), from the lag gauges on the /metrics `pages` (each loop reports at start)."""
    deadline = time.monotonic() + 30
    while True:
        groups: dict[str, tuple[str, set[str]]] = {}
        for line in (line for page in pages() for line in page.splitlines()):
            if line.startswith("funnelstream_bus_consumer_lag{"):
                labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
                service, group, topic = (labels[k].strip('"') for k in ("service", "group", "topic"))
                groups.setdefault(group, (service, set()))[1].add(topic)
        if {service for service, _ in groups.values()} >= set(CONSUMERS):
            return {g: (s, sorted(t)) for g, (s, t) in groups.items()}
        assert time.monotonic() < deadline, f"consumer groups on /metrics: {groups}"
        time.sleep(0.5)


class Backlog:
    """What is not yet applied, per service: its groups' lag on the bus and the rows waiting in its
    inbox or outbox; and the bus's end offsets, to tell that nothing was published in between."""

    def __init__(self, data_dir: Path, groups: dict[str, tuple[str, list[str]]]) -> None:
        self.bus = EmbeddedBus(data_dir / "bus.db")
        self.groups = groups
        self.topics = sorted({t for _, topics in groups.values() for t in topics})
        self.stores = {s: sqlite3.connect(f"file:{data_dir / f'{s}.db'}?mode=ro", uri=True, isolation_level=None)
                       for s in SERVICES}

    async def __aenter__(self) -> Backlog:
        await self.bus.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.stop()
        for db in self.stores.values():
            db.close()

    async def read(self) -> tuple[dict[str, int], int]:
        """Stores first, then the bus: a row relayed from an outbox after it was counted shows as
        lag or as a moved end offset at this check or the next."""
        pending = {s: sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in BACKLOG_TABLES[s])
                   for s, db in self.stores.items()}
        for group, (service, topics) in self.groups.items():
            pending[service] += sum((await self.bus.lag(group, topics)).values())
        ends = sum((await self.bus.lag(PROBE_GROUP, self.topics)).values())
        return pending, ends

    async def records(self) -> dict[str, int]:
        """Records on each consumed topic: how much work the import made for each service."""
        per_topic: Counter[str] = Counter()
        for (topic, _), count in (await self.bus.lag(PROBE_GROUP, self.topics)).items():
            per_topic[topic] += count
        return dict(per_topic)


@dataclass
class Timing:
    imported: float = 0.0  # seconds from the start until the command exited
    reflected: float = 0.0  # ... until nothing is pending anywhere
    services: dict[str, float] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)  # per topic, once reflected
    summary: str = ""


async def import_and_wait(gateway: Gateway, path: Path) -> Timing:
    timing = Timing()
    async with Backlog(gateway.data_dir, gateway.consumer_groups()) as backlog:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELSTREAM_")}
        started = time.perf_counter()
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "import", str(path), "--url", gateway.url,
            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stderr=asyncio.subprocess.PIPE)

        async def run_command() -> None:
            _, err = await command.communicate()
            timing.imported = time.perf_counter() - started
            timing.summary = err.decode()
            assert command.returncode == 0, f"funnelstream import exited {command.returncode}:\n{timing.summary}"

        finished = asyncio.create_task(run_command())
        try:
            return await settled(backlog, timing, finished, started)
        finally:
            if command.returncode is None:  # stopped by a failure here: the command goes too
                command.kill()
                await command.wait()


async def settled(backlog: Backlog, timing: Timing, finished: asyncio.Task[None], started: float) -> Timing:
    """Poll until the command has exited and nothing is pending anywhere; the times in `timing`."""
    idle_since: dict[str, float | None] = dict.fromkeys(SERVICES)
    quiet: tuple[float, int] | None = None  # (when, end offsets) of a check with nothing pending
    while True:
        await asyncio.sleep(POLL_SECONDS)
        at = time.perf_counter() - started
        pending, ends = await backlog.read()
        for service, count in pending.items():
            idle_since[service] = (idle_since[service] or at) if not count else None
        if not finished.done():
            assert at < TIMEOUT_SECONDS, "the import did not finish in time"
            continue
        await finished  # raises if the command failed
        if any(pending.values()):
            quiet = None
            assert at < TIMEOUT_SECONDS, f"still pending after {at:.0f} s: {pending}"
        elif quiet is not None and quiet[1] == ends:
            timing.reflected = max(quiet[0], timing.imported)
            timing.services = {s: max(t or at, timing.imported) for s, t in idle_since.items()}
            timing.records = await backlog.records()
            return timing
        else:
            quiet = (at, ends)


# -- checking the answers -------------------------------------------------------------------------
def timeline_length(http: httpx.Client, customer: str) -> int:
    count, cursor = 0, None
    while True:
        page = http.get(f"/api/customers/{customer}/timeline",
                        params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        count += len(page["items"])
        if not (cursor := page["next_cursor"]):
            return count


def open_followups(http: httpx.Client, policies: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {p: set() for p in policies}
    cursor = None
    while True:
        page = http.get("/api/followups", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        for item in page["items"]:
            if item["policy"] in policies and item["status"] in ("pending", "due", "overdue"):
                found[item["policy"]].add(item["customer_id"])
        if not (cursor := page["next_cursor"]):
            return found


def check(gateway: Gateway, ref: Reference) -> str:
    """Every answer checked equals the reference (AssertionError naming the first that does not)."""
    http, now = gateway.http, datetime.now(UTC)
    buyers = sorted(ref.orders)
    for customer in random.Random(7).sample(buyers, min(SAMPLE, len(buyers))):
        profile = http.get(f"/api/customers/{customer}").json()
        got = (profile["order_count"], round(profile["revenue"], 2), timeline_length(http, customer))
        wanted = (ref.orders[customer], round(float(ref.revenue[customer]), 2), ref.timeline[customer])
        assert got == wanted, f"customer {customer}: (orders, revenue, timeline) {got}, from the file {wanted}"
    lifecycle = http.get("/api/funnels/lifecycle/report", params={
        "from": f"{ref.first - timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}", "to": f"{ref.last + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"}).json()
    entered = lifecycle["stages"][0]["entered"]
    assert lifecycle["customers"] == entered == len(ref.customers), (
        f"lifecycle report: {lifecycle['customers']} customers, {entered} entered; from the file {len(ref.customers)}")
    wanted = ref.open_followups(now)
    near = ref.near_thresholds(now)
    got = {p: found - near for p, found in open_followups(http, set(wanted)).items()}
    for policy, customers in wanted.items():
        assert got[policy] == customers, (f"open {policy}: {len(got[policy])} customers, from the file "
                                          f"{len(customers)} (e.g. {sorted(got[policy] ^ customers)[:3]})")
    counts = ", ".join(f"{len(c):,} {p}" for p, c in wanted.items())
    return (f"checked against the file: {min(SAMPLE, len(buyers))} buyers' orders, revenue and timeline; the lifecycle "
            f"report's {entered:,} customers; open follow-ups {counts}")


# -- the cases ------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    make: Callable[[Path], Path]  # writes the file into the directory, returns its path
    reference: Callable[[Path], Reference]


def retail_file(directory: Path) -> Path:
    """A copy beside which the command may write its resume point (the original is read-only)."""
    copy = directory / "online_retail.csv.gz"
    shutil.copyfile(online_retail(), copy)
    return copy


def shop_file(directory: Path) -> Path:
    path = directory / "demo-shop.jsonl"
    shop.write_jsonl(shop.generate(shop.DEFAULT_SEED, DEMO_CUSTOMERS), path)
    return path


CASES = [Case("Online Retail", retail_file, retail_reference),
         Case(f"demo shop, {DEMO_CUSTOMERS:,} customers", shop_file, shop_reference)]


def run(case: Case) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="fs-bench-import-"))
    try:
        path = case.make(directory)
        ref = case.reference(path)
        ceiling = ceiling_rows_per_s(path, ref.rows)
        gateway = Gateway(directory / "data")
        try:
            timing = asyncio.run(import_and_wait(gateway, path))
            checked_at = time.perf_counter()
            checked = check(gateway, ref)
            check_seconds = time.perf_counter() - checked_at
        finally:
            gateway.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"name": case.name, "file": path.name, "ref": ref, "ceiling_rows_per_s": ceiling, "timing": timing,
            "checked": checked, "check_seconds": check_seconds}


def report(result: dict[str, Any]) -> None:
    ref, timing = result["ref"], result["timing"]
    rows_per_s = ref.rows / timing.imported
    said = next((line for line in timing.summary.splitlines() if line.startswith("imported ")), "")
    print(f"{result['name']} ({result['file']}): {ref.rows:,} rows -> {ref.events:,} events, "
          f"{len(ref.customers):,} customers, {len(ref.orders):,} buyers")
    print(f"   the command said: {said}")
    print(f"   import command: {timing.imported:.1f} s, {rows_per_s:,.0f} rows/s, {ref.events / timing.imported:,.0f} "
          f"events/s sent; reading and mapping the file alone {result['ceiling_rows_per_s']:,.0f} rows/s; "
          f"ratio {rows_per_s / result['ceiling_rows_per_s']:.2f}")
    services = ", ".join(f"{s} {t:.1f} s" for s, t in timing.services.items())
    print(f"   every service reflects the whole file {timing.reflected:.1f} s after the start ({services}): "
          f"{ref.events / timing.reflected:,.0f} events/s end to end; ratio to the import's events/s "
          f"{timing.imported / timing.reflected:.2f}")
    topics = ", ".join(f"{t} {n:,}" for t, n in sorted(timing.records.items(), key=lambda i: -i[1]) if n)
    print(f"   records on the bus then: {topics}")
    print(f"   {result['checked']} ({result['check_seconds']:.1f} s)", flush=True)


def main() -> None:
    for case in CASES:
        report(run(case))


if __name__ == "__main__":
    main()

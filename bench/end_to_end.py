"""End to end (issue 13): track events in over real HTTP until every service reflects them, on
`make run` and on the scale path, printed beside each other.

- embedded: the gateway as its own process as `make run` starts it (as in bench/importing.py: its
  services as child processes, SQLite stores and the embedded bus in a fresh DATA_DIR, a free port).
- scale: docker-compose.yml's layout on loopback, one replica each: Tansu (a Kafka-wire broker, in
  memory), a fresh PostgreSQL database per service (dropped afterwards), each service and the
  gateway a process of its own (tests/deployment.py). Its rate is what one replica of each does.
A client sends BENCH_E2E_EVENTS (default 30,000) track events for a tenth as many customers to
/v1/batch, 100 per request, 8 requests in flight: product views and cart adds of real Online Retail
products, and `Order Completed` (a third of the customers order twice, a third once, a third
never), each after a `Signed Up`. Timed from the first request to the moment nothing is pending
anywhere (every consumer group's lag 0, ingest's inbox and every outbox empty, twice in a row with
nothing published in between: bench/importing.py's check); the answers are then checked against a
reference worked out from the events sent: the lifecycle funnel report counts every customer,
every profile of a sample has its orders and revenue, every buyer has the
`satisfaction_after_purchase_7d` follow-up its purchase triggers and every one-order buyer an open
`welcome_new`. Prints events/s end to end, the rate ingest accepted them at, CPU ms per event over
every process (on the scale path the PostgreSQL backends serving the services and Tansu included)
and each role's share of it, and each process's peak RSS.
Target (issue 13): 10,000 events/s end to end, at most 250 MB RSS per process.
`python -m bench.end_to_end scale` (or `embedded`) runs one path only.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from bench import retail
from bench.importing import (
    BACKLOG_TABLES,
    PROBE_GROUP,
    SERVICES,
    Backlog,
    Gateway,
    consumer_groups,
    open_followups,
)
from shared.bus import create_bus
from shared.settings import CommonSettings
from tests.bus.tansu import start_broker
from tests.deployment import separate_processes
from tests.helpers import READER

EVENTS = int(os.environ.get("BENCH_E2E_EVENTS", "30000"))
PARTITIONS = "12"  # docker-compose.yml's BUS_PARTITIONS
PER_CUSTOMER = 10
BATCH = 100
IN_FLIGHT = 8
AUTH = ("dev-write-key", "")
POLL_SECONDS = {"embedded": 0.1, "scale": 0.5}  # a check on Kafka is dozens of requests: less often
SAMPLE = 200
TIMEOUT_SECONDS = 1800
TARGET_EVENTS_PER_S, TARGET_RSS_MB = 10_000, 250


@dataclass
class Sent:
    messages: list[dict[str, Any]] = field(default_factory=list)
    customers: set[str] = field(default_factory=set)
    orders: Counter[str] = field(default_factory=Counter)
    revenue: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    first: datetime = datetime.max.replace(tzinfo=UTC)
    last: datetime = datetime.min.replace(tzinfo=UTC)


def products(count: int = 500) -> list[tuple[str, str, float]]:
    found: dict[str, tuple[str, str, float]] = {}
    for row in retail.rows(20_000):
        if row["StockCode"] not in found and float(row["UnitPrice"]) > 0 and row["Description"]:
            found[row["StockCode"]] = (row["StockCode"], row["Description"], float(row["UnitPrice"]))
            if len(found) == count:
                break
    return list(found.values())


def workload(events: int, now: datetime) -> Sent:
    """`events` track messages, PER_CUSTOMER per customer over the last 30 days, sent in time order."""
    rng = random.Random(13)
    catalog = products()
    sent = Sent()
    for c in range(events // PER_CUSTOMER):
        customer = f"e2e-{c:06d}"
        sent.customers.add(customer)
        start = now - timedelta(days=30) + timedelta(seconds=rng.randrange(20 * 86400))
        orders = c % 3  # 0, 1 or 2 orders
        kinds = (["Product Viewed", "Signed Up"] + ["Product Viewed"] * (PER_CUSTOMER - 4 - orders)
                 + ["Product Added"] * 2 + ["Order Completed"] * orders)
        for n, kind in enumerate(kinds):
            sku, name, price = rng.choice(catalog)
            at = start + timedelta(minutes=37 * n)
            quantity = rng.randint(1, 6)
            properties: dict[str, Any] = {"sku": sku, "name": name, "price": price, "currency": "GBP"}
            if kind == "Order Completed":
                revenue = round(quantity * price, 2)
                properties |= {"order_id": f"{customer}-o{n}", "quantity": quantity, "revenue": revenue}
                sent.orders[customer] += 1
                sent.revenue[customer] += revenue
            sent.messages.append({
                "type": "track", "messageId": f"{customer}-{n}", "userId": customer, "event": kind,
                "properties": properties, "timestamp": at.isoformat().replace("+00:00", "Z"),
                "context": {"page": {"url": f"https://shop.example.co.uk/product/{sku}", "path": f"/product/{sku}"},
                            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
                            "locale": "en-GB", "library": {"name": "analytics.js", "version": "5.2.0"}}})
            sent.first, sent.last = min(sent.first, at), max(sent.last, at)
    sent.messages.sort(key=lambda m: m["timestamp"])
    return sent


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[p] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (from /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            todo += [int(c) for task in Path(f"/proc/{p}/task").iterdir() for c in (task / "children").read_text().split()]
        except OSError:
            continue
        found.append(p)
    return found


def service_of(pid: int) -> str:
    """`funnel` for `python -m services.funnel` (the gateway's children and ours alike)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return f"pid {pid}"
    module = args[args.index("-m") + 1] if "-m" in args[:-1] else ""
    return module.removeprefix("services.") if module.startswith("services.") else f"pid {pid}"


class Usage:
    """CPU seconds and peak RSS per role (`funnel`, `postgres: funnel`, `tansu`) of the processes
    `find` names (pid -> role) at each sample; a process first seen after `start` counts whole."""

    def __init__(self, find: Callable[[], Awaitable[dict[int, str]]]) -> None:
        self.find = find
        self.before: dict[int, float] = {}
        self.latest: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.peak_rss: dict[str, float] = {}  # role -> the most one of its processes held

    async def start(self) -> None:
        self.before = cpu_seconds(list(await self.find()))

    async def sample(self) -> None:
        found = await self.find()
        self.roles |= found
        self.latest |= cpu_seconds(list(found))
        for pid, role in found.items():
            self.peak_rss[role] = max(self.peak_rss.get(role, 0.0), rss_mb(pid))

    def cpu(self) -> dict[str, float]:
        per_role: dict[str, float] = defaultdict(float)
        for pid, seconds in self.latest.items():
            per_role[self.roles[pid]] += seconds - self.before.get(pid, 0.0)
        return dict(sorted(per_role.items(), key=lambda item: -item[1]))


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


@dataclass
class Timing:
    accepted: float = 0.0  # seconds until the last request was answered
    reflected: float = 0.0  # ... until nothing is pending anywhere
    services: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float] = field(default_factory=dict)  # per role
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per role once reflected


async def send(url: str, bodies: list[bytes], timing: Timing, started: float) -> None:
    queue = list(reversed(bodies))
    async with httpx.AsyncClient(base_url=url, auth=AUTH, timeout=120) as client:
        async def sender() -> None:
            while queue:
                response = await client.post("/v1/batch", content=queue.pop(), headers={"content-type": "application/json"})
                assert response.status_code == 200, response.text
                assert not response.json()["rejected"], response.text

        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    timing.accepted = time.perf_counter() - started


async def send_and_wait(url: str, bodies: list[bytes], backlog: Any, usage: Usage, poll: float) -> Timing:
    """Send every body, then poll `backlog` (its `read()`: pending per service, the bus's end
    offsets) until nothing is pending twice in a row with nothing published in between."""
    timing = Timing()
    await usage.start()
    started = time.perf_counter()
    sending = asyncio.create_task(send(url, bodies, timing, started))
    idle_since: dict[str, float | None] = dict.fromkeys(SERVICES)
    quiet: tuple[float, int] | None = None
    try:
        while True:
            await asyncio.sleep(poll)
            at = time.perf_counter() - started
            await usage.sample()
            pending, ends = await backlog.read()
            for service, count in pending.items():
                idle_since[service] = (idle_since[service] or at) if not count else None
            assert at < TIMEOUT_SECONDS, f"still pending after {at:.0f} s: {pending}"
            if not sending.done():
                continue
            await sending
            if any(pending.values()):
                quiet = None
            elif quiet is not None and quiet[1] == ends:
                timing.reflected = max(quiet[0], timing.accepted)
                timing.services = {s: max(t or at, timing.accepted) for s, t in idle_since.items()}
                timing.cpu, timing.peak_rss = usage.cpu(), usage.peak_rss
                return timing
            else:
                quiet = (at, ends)
    finally:
        sending.cancel()


# -- make run: one gateway process, its services as children, SQLite and the embedded bus ---------
def run_embedded(bodies: list[bytes], sent: Sent, directory: Path) -> tuple[Timing, str]:
    gateway = Gateway(directory / "embedded", {"GATEWAY_PROCESSES": "true"})  # as make run starts it
    try:
        async def find() -> dict[int, str]:
            return {p: service_of(p) for p in process_tree(gateway.process.pid)}

        async def measure() -> Timing:
            async with Backlog(gateway.data_dir, gateway.consumer_groups()) as backlog:
                return await send_and_wait(gateway.url, bodies, backlog, Usage(find), POLL_SECONDS["embedded"])

        timing = asyncio.run(measure())
        return timing, check(gateway.http, sent)
    finally:
        gateway.stop()


# -- the scale path: each service its own process and PostgreSQL database, Kafka (Tansu) -----------
class KafkaBacklog:
    """Backlog's answers on the scale path: inbox and outbox rows in each service's PostgreSQL
    database and each group's lag on Kafka; also which PostgreSQL backends serve which service."""

    def __init__(self, bus_env: dict[str, str], databases: dict[str, str],
                 groups: dict[str, tuple[str, list[str]]]) -> None:
        self.bus = create_bus(CommonSettings(**{k.lower(): v for k, v in bus_env.items()}))
        self.databases, self.groups = databases, groups
        self.topics = sorted({t for _, topics in groups.values() for t in topics})
        self.stores: dict[str, asyncpg.Connection] = {}

    async def __aenter__(self) -> KafkaBacklog:
        await self.bus.start()
        for service, url in self.databases.items():
            self.stores[service] = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.stop()
        for db in self.stores.values():
            await db.close()

    async def read(self) -> tuple[dict[str, int], int]:
        pending = {s: sum([await db.fetchval(f"SELECT count(*) FROM {t}") for t in BACKLOG_TABLES[s]])
                   for s, db in self.stores.items()}
        for group, (service, topics) in self.groups.items():
            pending[service] += sum((await self.bus.lag(group, topics)).values())
        ends = sum((await self.bus.lag(PROBE_GROUP, self.topics)).values())
        return pending, ends

    async def backends(self) -> dict[int, str]:
        """pid -> `postgres: <service>` of the server processes on the services' databases (not ours)."""
        names = {url.rsplit("/", 1)[1]: s for s, url in self.databases.items()}
        ours = [db.get_server_pid() for db in self.stores.values()]
        rows = await self.stores["ingest"].fetch(
            "SELECT pid, datname FROM pg_stat_activity WHERE datname = ANY($1::text[]) AND pid <> ALL($2::int[])",
            list(names), ours)
        return {r["pid"]: f"postgres: {names[r['datname']]}" for r in rows}


def tansu_pid(bootstrap: str) -> int | None:
    """The broker process listening on `bootstrap`, if we can see it (none for an external one)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "tansu" in args and f"tcp://{bootstrap}\0" in args:
            return int(cmdline.parent.name)
    return None


def until_ready(url: str, timeout: float = 180) -> None:
    """Every service's store, bus and consumers ready (Kafka group joins take a while on Tansu)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url}/ready not ready in {timeout:.0f} s"
        time.sleep(0.5)


def run_scale(bodies: list[bytes], sent: Sent, directory: Path) -> tuple[Timing, str]:
    with start_broker() as broker:
        bus_env = {"BUS_BACKEND": "kafka", "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                   "KAFKA_IDEMPOTENT_PRODUCER": str(broker.idempotent_producer).lower(), "BUS_PARTITIONS": PARTITIONS}
        broker_pid = tansu_pid(broker.bootstrap)
        with separate_processes(bus_env, directory, {"API_KEYS": "", "WRITE_KEYS": "", "LOG_LEVEL": "WARNING"},
                                timeout=120) as deployment:
            until_ready(deployment.url)
            groups = consumer_groups(lambda: [httpx.get(f"{u}/metrics", timeout=10).text for u in deployment.urls.values()])

            async def measure() -> Timing:
                async with KafkaBacklog(bus_env, deployment.databases, groups) as backlog:
                    async def find() -> dict[int, str]:
                        found = {p.pid: name for name, p in deployment.processes.items()}
                        return found | ({broker_pid: "tansu"} if broker_pid else {}) | await backlog.backends()

                    return await send_and_wait(deployment.url, bodies, backlog, Usage(find), POLL_SECONDS["scale"])

            timing = asyncio.run(measure())
            with httpx.Client(base_url=deployment.url, headers=READER, timeout=120) as http:
                return timing, check(http, sent)


def check(http: httpx.Client, sent: Sent) -> str:
    report = http.get("/api/funnels/lifecycle/report", params={
        "from": f"{sent.first - timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}",
        "to": f"{sent.last + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"}).json()
    entered = [stage["entered"] for stage in report["stages"]]
    buyers = set(sent.orders)
    repeat = {c for c, n in sent.orders.items() if n >= 2}
    assert report["customers"] == entered[0] == len(sent.customers), f"lifecycle report {report['customers']}, {entered}"
    assert entered[3:5] == [len(buyers), len(repeat)], f"lifecycle purchase/loyalty {entered}, sent {len(buyers)}, {len(repeat)}"
    for customer in random.Random(7).sample(sorted(sent.customers), min(SAMPLE, len(sent.customers))):
        profile = http.get(f"/api/customers/{customer}").json()
        got = (profile["order_count"], round(profile["revenue"], 2))
        assert got == (sent.orders[customer], round(sent.revenue[customer], 2)), f"{customer}: {got}"
    found = open_followups(http, {"welcome_new"})
    single = {c for c, n in sent.orders.items() if n == 1}
    assert found["welcome_new"] >= single, f"welcome_new for {len(found['welcome_new'] & single)} of {len(single)}"
    satisfied = set()
    cursor = None
    while True:
        page = http.get("/api/followups", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        satisfied |= {i["customer_id"] for i in page["items"] if i["policy"] == "satisfaction_after_purchase_7d"}
        if not (cursor := page["next_cursor"]):
            break
    assert satisfied == buyers, f"satisfaction follow-ups for {len(satisfied)} customers, {len(buyers)} buyers"
    return (f"checked: the lifecycle report counts all {entered[0]:,} customers ({len(buyers):,} purchase, "
            f"{len(repeat):,} loyalty), {SAMPLE} profiles' orders and revenue, {len(buyers):,} satisfaction and "
            f"{len(single):,} welcome follow-ups")


PATHS = {"embedded": ("make run: the gateway and, as child processes, its services, on SQLite and the embedded bus", run_embedded),
         "scale": (f"scale path, one replica each: every service and the gateway its own process, its own PostgreSQL "
                   f"database, Kafka via Tansu ({PARTITIONS} partitions)", run_scale)}


def report(name: str, what: str, n: int, timing: Timing, checked: str) -> None:
    rate = n / timing.reflected
    print(f"{name} ({what}):")
    print(f"   ingest answered every request after {timing.accepted:.1f} s ({n / timing.accepted:,.0f} events/s)")
    services = ", ".join(f"{s} {t:.1f} s" for s, t in timing.services.items())
    print(f"   every service reflects them {timing.reflected:.1f} s after the first request ({services}): "
          f"{rate:,.0f} events/s end to end; target {TARGET_EVENTS_PER_S:,} "
          f"({'met' if rate >= TARGET_EVENTS_PER_S else 'missed'}, ratio {rate / TARGET_EVENTS_PER_S:.2f})")
    total = sum(timing.cpu.values())
    shares = ", ".join(f"{role} {seconds / total:.0%}" for role, seconds in timing.cpu.items() if seconds > 0)
    print(f"   CPU {total:.1f} s over every process ({total / timing.reflected:.2f} cores busy): "
          f"{1000 * total / n:.2f} ms per event; where the time goes: {shares}")
    rss = {role: mb for role, mb in timing.peak_rss.items() if not role.startswith("postgres")}
    worst = max(rss.values(), default=0.0)
    print(f"   peak RSS per process: {', '.join(f'{r} {mb:.0f} MB' for r, mb in rss.items())} "
          f"(target at most {TARGET_RSS_MB} MB: {'met' if worst <= TARGET_RSS_MB else 'missed'})")
    print(f"   {checked}", flush=True)


def main(paths: list[str] | None = None) -> None:
    """Both paths on the same workload (or those named: `python -m bench.end_to_end scale`)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleaned up as on Ctrl-C: processes, broker, databases
    sent = workload(EVENTS, datetime.now(UTC))
    bodies = [orjson.dumps({"batch": sent.messages[i:i + BATCH]}) for i in range(0, len(sent.messages), BATCH)]
    n = len(sent.messages)
    print(f"{n:,} track events, {len(sent.customers):,} customers, {BATCH} per request, {IN_FLIGHT} in flight")
    rates: dict[str, Timing] = {}
    for name in paths or list(PATHS):
        what, run = PATHS[name]
        directory = Path(tempfile.mkdtemp(prefix=f"fs-bench-e2e-{name}-"))
        try:
            timing, checked = run(bodies, sent, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        report(name, what, n, timing, checked)
        rates[name] = timing
    if len(rates) > 1:
        print("   side by side: " + " | ".join(
            f"{name} {n / t.reflected:,.0f} events/s end to end, ingest {n / t.accepted:,.0f} events/s, "
            f"{1000 * sum(t.cpu.values()) / n:.2f} CPU ms per event" for name, t in rates.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

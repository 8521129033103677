"""python -m services.demo: what `make demo` runs.

Starts the gateway (every service in it) on DATA_DIR (default ./data-demo) and PORT (8080), waits
for /health, loads the demo shop once through `funnelstream import` (the shop's file stays in
DATA_DIR/demo-shop.jsonl; DATA_DIR/demo-shop.loaded marks it done, so a second `make demo` only
serves), prints the URLs and keeps serving, saying when the services have read the whole shop,
until Ctrl-C (or SIGTERM), which stops the gateway and exits 0.

    python -m services.demo generate shop.jsonl [--seed 42] [--customers 20000] [--now ISO-TIME]
writes a shop file and nothing else (tests, benchmarks, a shop to import elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from services.demo import shop
from shared.runner import wait_until_healthy

WRITE_KEY, READER_KEY = "dev-write-key", "dev-reader-key"  # the loopback dev keys of `make run`
SHOP_FILE, MARKER = "demo-shop.jsonl", "demo-shop.loaded"
CONSUMERS = ("segmentation", "funnel")  # the services that read every event


class DemoError(RuntimeError):
    """Why the demo cannot go on (one line, exit 2)."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "generate":
            count = shop.write_jsonl(shop.generate(args.seed, args.customers, args.now), Path(args.path))
            print(f"wrote {count:,} messages of {args.customers:,} customers to {args.path}", file=sys.stderr)
            return 0
        return serve(args)
    except DemoError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__.split("\n\n")[0])
    root.add_argument("command", nargs="?", default="serve", choices=["serve", "generate"])
    root.add_argument("path", nargs="?", default=SHOP_FILE, help="generate: the file to write")
    root.add_argument("--seed", type=int, default=shop.DEFAULT_SEED)
    root.add_argument("--customers", type=int, default=shop.DEFAULT_CUSTOMERS)
    root.add_argument("--now", type=_time, default=None, help="the shop's present (default: now)")
    return root


def _time(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


# -- serve ----------------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    data_dir = Path(os.environ.get("DATA_DIR") or "data-demo")
    port = int(os.environ.get("PORT") or 8080)
    url = f"http://127.0.0.1:{port}"
    _check_port_free(port)
    data_dir.mkdir(parents=True, exist_ok=True)
    gateway = _start_gateway(data_dir, port)
    signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C
    try:
        _wait_healthy(url, gateway)
        loaded, sent_at = _load_once(data_dir, url, args)
        _print_welcome(url, data_dir, loaded, reading=sent_at is not None)
        return _serve_until_stopped(gateway, url, data_dir, loaded, sent_at)
    except KeyboardInterrupt:
        print("\nstopping the demo (data kept in " f"{data_dir}/)", file=sys.stderr)
        return 0
    finally:
        _stop(gateway)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(f"port {port} is taken (is `make run` up?); stop it or pick another: "
                            f"make demo PORT={port + 10}") from None


def _start_gateway(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATA_DIR": str(data_dir), "PORT": str(port), "HOST": "127.0.0.1",
           "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"), "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
           "GATEWAY_PROCESSES": os.environ.get("GATEWAY_PROCESSES", "true")}  # as make run: every core loads the shop
    return subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env)


def _wait_healthy(url: str, gateway: subprocess.Popen[bytes], timeout: float = 180) -> None:
    problem = wait_until_healthy(url, gateway, timeout)
    if problem:
        raise DemoError(f"the gateway {problem} while starting; its reason is above")


def _stop(gateway: subprocess.Popen[bytes]) -> None:
    """Ctrl-C reached the gateway too (one process group): give it a moment, then ask, then insist."""
    for ask in (None, signal.SIGTERM, signal.SIGKILL):
        if ask is not None and gateway.poll() is None:
            gateway.send_signal(ask)
        try:
            gateway.wait(timeout=1 if ask is None else 20)
            return
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            continue


# -- load -----------------------------------------------------------------------------------------
def _load_once(data_dir: Path, url: str, args: argparse.Namespace) -> tuple[dict[str, Any], float | None]:
    """The shop's description, and when its import began (None: loaded by an earlier run)."""
    marker = data_dir / MARKER
    if marker.exists():
        loaded: dict[str, Any] = json.loads(marker.read_text())
        print(f"the demo shop is already loaded ({loaded['events']:,} events); rm -r {data_dir} for a fresh one",
              file=sys.stderr)
        return loaded, None
    path = data_dir / SHOP_FILE
    resuming = path.exists() and path.with_name(path.name + ".import-state.json").exists()
    if not resuming:  # a half-done import goes on with its own file (`--resume`)
        now = args.now or datetime.now(UTC)
        print(f"==> generating the demo shop: {args.customers:,} customers over the {shop.HISTORY_DAYS} days "
              f"before {now:%Y-%m-%d %H:%M} UTC (seed {args.seed})", file=sys.stderr)
        shop.write_jsonl(shop.generate(args.seed, args.customers, now), path)
    about = _describe(path)
    print(f"==> loading {about['events']:,} events through the ingest API (funnelstream import)", file=sys.stderr)
    started = time.monotonic()
    _import(path, url, resuming)
    sent = time.monotonic() - started
    print(f"==> sent in {sent:.1f} s ({about['events'] / sent:,.0f} events/s)", file=sys.stderr)
    # Every event is on the bus: the services read it even across a restart, so loading is done.
    loaded = {**about, "seed": args.seed, "loaded_at": shop.iso(datetime.now(UTC)), "import_seconds": round(sent, 1)}
    marker.write_text(json.dumps(loaded, indent=2) + "\n")
    return loaded, started


def _import(path: Path, url: str, resume: bool) -> None:
    from services import cli

    argv = ["import", str(path), "--format", "jsonl", "--url", url, "--write-key", WRITE_KEY]
    code = cli.main(argv + (["--resume"] if resume else []))
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise DemoError(f"the import stopped (exit {code}); `make demo` again goes on from where it stopped")


def _describe(path: Path) -> dict[str, Any]:
    """What the welcome names: counts, the shop's present, a customer worth looking at."""
    events, orders, last = 0, Counter[str](), ""
    customers: set[str] = set()
    with open(path, "rb") as lines:
        for line in lines:
            message = json.loads(line)
            events += 1
            customers.add(message["anonymousId"])
            last = max(last, message["timestamp"])
            if message.get("event") == "Order Completed":
                orders[message["userId"]] += 1
    regular = orders.most_common(1)[0][0] if orders else None
    return {"events": events, "customers": len(customers), "buyers": len(orders), "orders": sum(orders.values()),
            "last_event_at": last, "example_customer": regular}


def _serve_until_stopped(gateway: subprocess.Popen[bytes], url: str, data_dir: Path, loaded: dict[str, Any],
                         sent_at: float | None) -> int:
    """Serve; meanwhile, after a load, say how far the services have read and when they are through."""
    events, shown = loaded["events"], time.monotonic()
    while True:
        try:
            return gateway.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        if sent_at is None:
            continue
        done = _processed(url)
        if done >= events:
            took = time.monotonic() - sent_at
            print(f"==> every service has read the whole shop, {took:.0f} s after the import began "
                  f"({events / took:,.0f} events/s)", file=sys.stderr, flush=True)
            (data_dir / MARKER).write_text(json.dumps({**loaded, "load_seconds": round(took, 1)}, indent=2) + "\n")
            sent_at = None
        elif time.monotonic() - shown >= 30:
            shown = time.monotonic()
            print(f"    the services have read {done:,} of {events:,} events", file=sys.stderr, flush=True)


def _processed(url: str) -> int:
    counts = dict.fromkeys(CONSUMERS, 0.0)
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return 0
    for line in text.splitlines():
        if line.startswith("funnelstream_bus_messages_processed_total{") and 'topic="interactions.v1"' in line:
            service = line.split('service="')[1].split('"')[0]
            if service in counts:
                counts[service] = float(line.rsplit(" ", 1)[1])
    return int(min(counts.values()))


# -- welcome --------------------------------------------------------------------------------------
def _print_welcome(url: str, data_dir: Path, loaded: dict[str, Any], reading: bool) -> None:
    since = (datetime.fromisoformat(loaded["last_event_at"].replace("Z", "+00:00"))
             - timedelta(days=shop.HISTORY_DAYS)).strftime("%Y-%m-%d")
    auth = f"-H 'Authorization: Bearer {READER_KEY}'"
    lines = [
        "",
        f"The demo shop is up: {loaded['customers']:,} customers, {loaded['buyers']:,} buyers, "
        f"{loaded['orders']:,} orders, {loaded['events']:,} events",
        f"  gateway:   {url}",
        f"  API docs:  {url}/docs",
    ]
    if _answers(f"{url}/app/"):
        lines.append(f"  dashboard: {url}/app/")
    lines += [
        "  try:",
        f"    curl -s {auth} '{url}/api/funnels/lifecycle/report?from={since}T00:00:00Z&breakdown=channel'",
        f"    curl -s {auth} '{url}/api/segments'",
    ]
    if loaded.get("example_customer"):
        lines.append(f"    curl -s {auth} '{url}/api/customers/{loaded['example_customer']}'")
    lines += [
        "  (the services are still reading the shop: answers fill in as they go, a line below says when"
        " they are through)" if reading else
        "  (value tiers and RFM follow within a minute of start, at the services' scheduled pass)",
        f"Ctrl-C stops it; the data stays in {data_dir}/ (rm -r {data_dir} for a fresh shop).",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5, follow_redirects=True).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())

"""`make run` on every core: each embedded service in a process of its own, the gateway in front.

One Python process runs Python on one core at a time, so with every service inside the gateway the
embedded default used one of the machine's cores. With GATEWAY_PROCESSES on, the gateway starts
each service whose URL is unset as a child (`python -m services.<name>`) on a free loopback port,
sharing DATA_DIR and its bus file (the embedded bus is made for several processes: WAL, consumer
groups in a table), and proxies to it as it would to a container. Children die with the gateway
(the kernel's parent-death signal, and SIGTERM on a clean stop), so one Ctrl-C stops them all; one
that exits on its own is started again, at once after a long run and after a growing pause when it
keeps dying at start (a broken store or setting: a crash loop should not eat a core). Their logs go
to DATA_DIR/logs/<name>.log.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from services.gateway.settings import SERVICES, GatewaySettings
from shared.runner import load, wait_until_healthy

log = logging.getLogger("funnelstream.supervisor")
READY_TIMEOUT_SECONDS = 120.0  # first start of a big store runs its migrations
WATCH_SECONDS = 1.0
STABLE_SECONDS = 60.0  # a child that ran this long before exiting is started again at once
LONGEST_PAUSE_SECONDS = 30.0
ROOT = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0  # exits in a row, each before STABLE_SECONDS of running
    restart_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Supervisor:
    def __init__(self, settings: GatewaySettings) -> None:
        self.logs = settings.data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.children = [Child(name, _free_port(), self.logs / f"{name}.log")
                         for name in SERVICES if not settings.url_of(name)]
        self.stopping = threading.Event()

    def start(self) -> GatewaySettings:
        """Start every child, wait until each answers, and return the gateway's settings with
        their URLs filled in. Stops them all (and raises) when one cannot start."""
        for child in self.children:  # a setting a child cannot run with: one line now, nothing started
            load(getattr(import_module(f"services.{child.name}.settings"), f"{child.name.capitalize()}Settings"))
        atexit.register(self.stop)
        for child in self.children:
            self._spawn(child)
        try:
            for child in self.children:
                self._wait_healthy(child)
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._watch, name="supervisor", daemon=True).start()
        return self.settings.model_copy(update={f"{c.name}_url": c.url for c in self.children})

    def stop(self) -> None:
        self.stopping.set()
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, "PORT": str(child.port), "HOST": "127.0.0.1",
               "DATA_DIR": str(self.settings.data_dir), "BUS_PATH": str(self.settings.embedded_bus_path),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "FUNNELSTREAM_SUPERVISED": "1"}
        with open(child.log_path, "ab") as out:
            child.process = subprocess.Popen([sys.executable, "-m", f"services.{child.name}"], env=env, cwd=ROOT,
                                             stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()

    def _wait_healthy(self, child: Child) -> None:
        assert child.process is not None
        problem = wait_until_healthy(child.url, child.process, READY_TIMEOUT_SECONDS)
        if problem:
            raise RuntimeError(f"the {child.name} service {problem}; its log ({child.log_path}) ends:\n"
                               f"{_tail(child.log_path)}")

    def _watch(self) -> None:
        """Start again a child that exited while the gateway runs (its store and bus offsets are on
        disk, so it goes on where it stopped)."""
        while not self.stopping.wait(WATCH_SECONDS):
            for child in self.children:
                if child.process is not None and child.process.poll() is not None and not self.stopping.is_set():
                    self._restart(child, time.monotonic())

    def _restart(self, child: Child, now: float) -> None:
        assert child.process is not None
        if child.restart_at is None:
            child.quick_exits = child.quick_exits + 1 if now - child.started_at < STABLE_SECONDS else 0
            pause = restart_pause(child.quick_exits)
            log.error("the %s service exited with %s; starting it again%s (log: %s)", child.name,
                      child.process.returncode, f" in {pause:.0f} s" if pause else "", child.log_path)
            child.restart_at = now + pause
        if now >= child.restart_at:
            child.restart_at = None
            self._spawn(child)


def restart_pause(quick_exits: int) -> float:
    """Seconds before starting a child again: none for its first quick exit in a row, then 2, 4, 8
    and so on up to LONGEST_PAUSE_SECONDS."""
    return 0.0 if quick_exits <= 1 else min(LONGEST_PAUSE_SECONDS, 2.0 ** (quick_exits - 1))


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the gateway dies, even by kill -9."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def merged_metrics(texts: list[str]) -> bytes:
    """One Prometheus text from several processes' (the gateway's and its children's): samples of
    one family together under one HELP/TYPE. Families every process has without a service label
    (python_*, process_*) would be one series written several times, so only the first text's count."""
    families: dict[str, Metric] = {}
    for index, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            if index and family.name.startswith(("python_", "process_")):
                continue
            if family.name in families:
                families[family.name].samples.extend(family.samples)
            else:
                families[family.name] = family
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families

"""`make run` stops the way a newcomer stops it, Ctrl-C in its terminal or a SIGTERM to make, with
no `make: *** ... Error` and nothing left listening."""
from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.gateway.settings import SERVICES
from tests.helpers import ROOT, free_port


class MakeRun:
    """`make run` in a pseudo-terminal of its own (as in a user's terminal), with its output."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "LOG_FORMAT": "text"}
        # keys would replace the dev keys; an outer `make test PORT=...` would reach this make
        for var in ("API_KEYS", "WRITE_KEYS", "BUS_BACKEND", "HOST", "BUS_PATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
            env.pop(var, None)
        # the test's own interpreter, and no reinstall whatever the age of pyproject.toml
        argv = ["make", "--no-print-directory", "-o", ".venv/.installed", "run", f"PY={sys.executable}",
                f"PORT={self.port}", f"DATA_DIR={data_dir}"]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: make in the pty's session, as a shell would start it
            os.chdir(ROOT)
            os.execvpe("make", argv, env)
        self.output = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the terminal closed: everyone in it is gone
                    return
                if not chunk:
                    return
                self.output += chunk

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            self.read(0.3)
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        raise AssertionError(f"make run did not serve:\n{self.text}")

    def wait_for_exit(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.read(0.5)
                return status
        raise AssertionError(f"make run did not stop:\n{self.text}")

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r", "")

    def listening(self) -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def services(self) -> dict[int, str]:
        """pid -> module of every process make started, below it (the gateway and its children)."""
        found, todo = {}, [self.pid]
        while todo:
            parent = todo.pop()
            for task in Path(f"/proc/{parent}/task").glob("*"):
                for child in (task / "children").read_text().split() if (task / "children").exists() else []:
                    argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                    found[int(child)] = argv[2].decode() if len(argv) > 2 and argv[1] == b"-m" else argv[0].decode()
                    todo.append(int(child))
        return found

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.fixture
def make_run(tmp_path: Path):
    run = MakeRun(tmp_path / "data")
    try:
        yield run
    finally:
        run.kill()


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"  # dead, not yet reaped
    except FileNotFoundError:
        return True


class TestStoppingMakeRun:
    def test_ctrl_c_stops_everything_without_a_make_error(self, make_run: MakeRun) -> None:
        make_run.wait_until_serving()
        assert "Ctrl-C stops them" in make_run.text
        services = make_run.services()
        assert sorted(services.values()) == sorted([*(f"services.{name}" for name in SERVICES), "services.gateway"])
        os.write(make_run.fd, b"\x03")  # the terminal sends SIGINT to make and the server
        status = make_run.wait_for_exit()
        assert "make: ***" not in make_run.text and "Traceback" not in make_run.text, make_run.text
        assert "Finished server process" in make_run.text  # it shut down, not killed
        assert not make_run.listening()
        assert all(gone(pid) for pid in services), make_run.services()
        # make ends itself by the signal it got (GNU make always does), reporting nothing
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 or os.WTERMSIG(status) == signal.SIGINT

    def test_sigterm_to_make_stops_the_server_too(self, make_run: MakeRun) -> None:
        make_run.wait_until_serving()
        services = make_run.services()
        os.kill(make_run.pid, signal.SIGTERM)
        status = make_run.wait_for_exit()
        assert "make: ***" not in make_run.text and "Traceback" not in make_run.text, make_run.text
        assert "Finished server process" in make_run.text
        assert not make_run.listening()  # before, the server outlived make (its shell got the signal)
        assert all(gone(pid) for pid in services), make_run.services()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 or os.WTERMSIG(status) == signal.SIGTERM

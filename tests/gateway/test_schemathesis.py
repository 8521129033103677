"""Every operation of the merged OpenAPI document, generated and sent through the gateway over HTTP (a
live `python -m services.gateway`, every service in-process) by schemathesis: no answer is a 5xx,
every status is documented, every answer has the documented content type and schema.

Schemathesis rather than hand-written fuzzing: it reads the document the clients read, so a route
is covered the day it is documented, and from each operation's own parameter and body schemas it
generates the boundary, wrong-type, odd-encoding and missing-field cases nobody thinks to write (it
found the control characters in paths the gateway could not forward).

Its settings are in tests/gateway/schemathesis.toml (the same file runs it by hand against
`make run`): deterministic and bounded, a minute or so on 2 cores. It runs as schemathesis's own
command, which has every phase (examples, coverage, fuzzing); its pytest plugin's lazy schemas do
not work with this pytest.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port, start_process, stop_process, wait_until_healthy

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.timeout(600)
def test_no_server_error_and_every_answer_documented(tmp_path: Path):
    port, log = free_port(), tmp_path / "gateway.log"
    # Rate limits off: the point here is what the services answer (tests/gateway/test_rate_limits.py).
    limits_off = {f"GATEWAY_RATE_LIMIT_{kind}": "0" for kind in ("API", "INGEST", "ANONYMOUS")}
    gateway = start_process("services.gateway", {"PORT": str(port), "DATA_DIR": str(tmp_path / "data"), **limits_off}, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(base, gateway, log)
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
             "run", f"{base}/openapi.json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=540,
        )
    finally:
        stop_process(gateway)
    summary = run.stdout[run.stdout.find("SUMMARY"):]
    print(summary)  # operations, phases and cases run: `pytest -s` shows them
    assert run.returncode == 0, f"{run.stdout[-12000:]}\n{run.stderr[-3000:]}\ngateway log:\n{log.read_text()[-4000:]}"
    assert "generated" in summary and " failed" not in summary, summary


def test_the_settings_keep_it_deterministic_and_bounded():
    import tomllib

    config = tomllib.loads(CONFIG.read_text())
    assert config["generation"]["deterministic"] and config["generation"]["database"] == "none"
    assert config["workers"] == 1 and config["generation"]["max-examples"] <= 20
    assert {name for name, check in config["checks"].items() if isinstance(check, dict) and check["enabled"]} == {
        "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"}

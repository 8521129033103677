"""How `funnelstream import` talks to ingest when the server misbehaves: a scripted server (httpx's
MockTransport) answering 503, 429 with Retry-After, dropped connections, 413, 401; waits recorded,
not slept."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services import import_client, importer
from services.import_client import ImportStopped, ResumePoint, Sender, Target


class Quiet:
    def set_total(self, total: int) -> None: ...
    def start_at(self, done: int) -> None: ...
    def advance(self, count: int) -> None: ...
    def note(self, text: str) -> None: ...


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(import_client.asyncio, "sleep", sleep)
    return slept


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps({"type": "track", "event": "x", "userId": f"u{i}", "messageId": f"m{i}"}) + "\n"
                            for i in range(10)))
    return path


class Server:
    """Answers from a script, then 200s that accept the batch; records each batch it accepted."""

    def __init__(self, script: list[Callable[[httpx.Request], httpx.Response]]) -> None:
        self.script = script
        self.accepted: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)["batch"]
        if batch and self.script:
            return self.script.pop(0)(request)
        if batch:
            self.accepted.append([m["messageId"] for m in batch])
        rejected = [{"index": i, "messageId": m["messageId"], "reason": "no"} for i, m in enumerate(batch)
                    if m["messageId"] == "m7"]
        return httpx.Response(200, json={"success": True, "accepted": len(batch) - len(rejected), "rejected": rejected})


def status(code: int, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, headers=headers, json={"error": {"code": "x", "message": "nope"}})


def dropped(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection reset", request=request)


async def run(path: Path, server: Server, **target: object) -> import_client.Tally:
    plan = importer.read(path, "jsonl", {})
    point = ResumePoint(importer.fingerprint(path), plan.format, {})
    options = {"batch_messages": 3, "in_flight": 1, **target}
    return await Sender(plan, path, point, Target(url="http://ingest", transport=httpx.MockTransport(server),
                                                  **options), Quiet()).run()  # type: ignore[arg-type]


class TestRetries:
    async def test_5xx_429_and_dropped_connections_are_retried_and_everything_goes_in_once(self, history, waits):
        server = Server([status(503), status(429, **{"Retry-After": "7"}), dropped, status(502)])
        tally = await run(history, server)
        assert [len(b) for b in server.accepted] == [3, 3, 3, 1]
        assert tally.accepted == 9 and tally.rejected == 1
        assert 7 in waits and len(waits) == 4 and all(w <= 7 for w in waits)
        (reject,) = [json.loads(line) for line in history.with_name("h.jsonl.rejects.jsonl").read_text().splitlines()]
        assert reject == {"rows": [8], "reason": "rejected by ingest: no", "messageId": "m7"}

    async def test_backoff_doubles_up_to_its_cap_then_the_import_stops_resumable(self, history, waits):
        server = Server([lambda r: Server([])(r)] + [status(503)] * 10)
        with pytest.raises(ImportStopped, match=r"failed 10 times in a row \(last: HTTP 503\); 3 events are in"):
            await run(history, server, backoff_cap=4.0)
        assert len(waits) == 9 and max(waits) <= 4.0 and waits[0] <= 0.5
        assert ResumePoint.load(history).acknowledged == 3  # type: ignore[union-attr]

    async def test_a_401_stops_at_once(self, history, waits):
        server = Server([status(401)])
        with pytest.raises(ImportStopped, match=r"refuses the write key \(401: nope\)"):
            await run(history, server)
        assert waits == [] and server.accepted == []

    async def test_a_413_splits_the_batch(self, history, waits):
        server = Server([status(413)])
        await run(history, server, batch_messages=4)
        assert [len(b) for b in server.accepted] == [2, 2, 4, 2]

"""Sending a planned import through the ingest API (`POST /v1/batch`, the SDKs' path), with the
resume point and the rejects file of `funnelstream import` (docs/api.md section 7).

Batches of a few hundred messages and under the request limit go out several at a time. 5xx, 429
(after its Retry-After) and connection errors are retried with exponential backoff up to a cap;
a 401 stops at once. After each batch the server acknowledged, in file order, the resume point
(`PATH.import-state.json`) says how many messages are in, so `--resume` goes on from there; the
message ids derive from the file, so a batch sent twice (a retry, a resume) changes nothing.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx

from services import importer
from services.importer import Plan, Planned, Reject, batches

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_WRITE_KEY = "dev-write-key"  # the dev key of `make run`
STATE_VERSION = 1


class ImportStopped(RuntimeError):
    """The import cannot go on (one line; exit 2). What was acknowledged is in the resume point."""


class Reporter(Protocol):
    def set_total(self, total: int) -> None: ...
    def start_at(self, done: int) -> None: ...
    def advance(self, count: int) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class Target:
    url: str = DEFAULT_URL
    write_key: str = DEFAULT_WRITE_KEY
    in_flight: int = 4
    batch_messages: int = 250
    batch_bytes: int = 400_000  # the request limit is 500 KB
    attempts: int = 10  # per batch, then the import stops (resumable)
    backoff_cap: float = 30.0
    timeout: float = 60.0
    transport: httpx.AsyncBaseTransport | None = None  # tests: the gateway in-process


@dataclass
class ResumePoint:
    """How far an import of one file with one set of options is acknowledged, kept next to it."""
    file_sha256: str
    format: str
    options: dict[str, Any]
    shift_target: str | None = None  # `--shift-to now` resolved once, so a resumed import moves alike
    acknowledged: int = 0
    accepted: int = 0
    ingest_rejects: list[dict[str, Any]] = field(default_factory=list)  # within the acknowledged
    version: int = STATE_VERSION

    @staticmethod
    def path_of(path: Path) -> Path:
        return path.with_name(path.name + ".import-state.json")

    @classmethod
    def load(cls, path: Path) -> ResumePoint | None:
        try:
            data = json.loads(cls.path_of(path).read_text())
            return cls(**data) if data.get("version") == STATE_VERSION else None
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        """Written whole then renamed: a kill leaves the old point or the new one, never half."""
        final = self.path_of(path)
        temporary = final.with_name(final.name + ".tmp")
        try:
            temporary.write_text(json.dumps(asdict(self)))
            os.replace(temporary, final)
        except OSError as exc:
            raise ImportStopped(f"cannot write the resume point {final}: {exc.strerror or exc}") from None

    def matches(self, other: ResumePoint) -> bool:
        return (self.file_sha256, self.format, self.options) == (other.file_sha256, other.format, other.options)


@dataclass
class Tally:
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    seconds: float = 0.0
    stopped_at_limit: bool = False


def rejects_path(path: Path) -> Path:
    return path.with_name(path.name + ".rejects.jsonl")


class Sender:
    """One run: the plan's messages from `point.acknowledged` on, at most `limit` of them."""

    def __init__(self, plan: Plan, path: Path, point: ResumePoint, target: Target, progress: Reporter,
                 limit: int | None = None) -> None:
        self.plan, self.path, self.point, self.target, self.progress = plan, path, point, target, progress
        self.limit = limit
        self.tally = Tally(accepted=point.accepted, rejected=len(plan.rejects) + len(point.ingest_rejects))
        self._done: dict[int, tuple[int, list[dict[str, Any]]]] = {}  # batch start -> (end, its rejects)
        self._rejects_file: TextIO | None = None
        rejects_path(path).unlink(missing_ok=True)  # a file from an earlier run would mislead
        for reject in [r.as_json() for r in plan.rejects] + point.ingest_rejects:
            self._write_reject(reject)

    async def run(self) -> Tally:
        started = time.monotonic()
        first = self.point.acknowledged
        end = len(self.plan.messages) if self.limit is None else min(len(self.plan.messages), first + self.limit)
        self.tally.stopped_at_limit = end < len(self.plan.messages)
        try:
            async with httpx.AsyncClient(base_url=self.target.url, auth=(self.target.write_key, ""),
                                         timeout=self.target.timeout, transport=self.target.transport) as client:
                await self._check_server(client)
                self.point.save(self.path)  # before anything is sent: a resume point can be kept
                self.progress.set_total(len(self.plan.messages))  # only now: a refusal prints one line
                self.progress.start_at(first)
                self._note()
                queue: asyncio.Queue[tuple[int, list[Planned]]] = asyncio.Queue()
                for start, batch in batches(self.plan.messages[first:end], self.target.batch_messages,
                                            self.target.batch_bytes):
                    queue.put_nowait((first + start, batch))
                async with asyncio.TaskGroup() as group:
                    for _ in range(self.target.in_flight):
                        group.create_task(self._worker(client, queue))
        except* ImportStopped as stopped:
            raise stopped.exceptions[0] from None
        finally:
            if self._rejects_file is not None:
                self._rejects_file.close()
            self.tally.seconds = time.monotonic() - started
        return self.tally

    async def _check_server(self, client: httpx.AsyncClient) -> None:
        """An empty batch: the server is there and takes the write key, before anything is sent."""
        for attempt in range(3):
            try:
                response = await client.post("/v1/batch", json={"batch": []})
                break
            except httpx.TransportError as exc:
                if attempt == 2:
                    raise ImportStopped(f"cannot reach {self.target.url}: {describe(exc)}") from None
                await asyncio.sleep(0.3 * 2 ** attempt)
        self._refuse_if_fatal(response)

    async def _worker(self, client: httpx.AsyncClient, queue: asyncio.Queue[tuple[int, list[Planned]]]) -> None:
        while not queue.empty():
            start, batch = queue.get_nowait()
            self.tally.sent += len(batch)
            rejects = await self._deliver(client, batch, start)
            self._acknowledged(start, len(batch), rejects)

    async def _deliver(self, client: httpx.AsyncClient, batch: list[Planned], start: int) -> list[dict[str, Any]]:
        """The batch in; its rejected messages (with their rows) out. A 413 splits it in two."""
        response = await self._post(client, {"batch": [p.message for p in batch]})
        if response.status_code == 413 and len(batch) > 1:
            half = len(batch) // 2
            return [*await self._deliver(client, batch[:half], start),
                    *await self._deliver(client, batch[half:], start + half)]
        self._refuse_if_fatal(response)
        answer = response.json()
        self.tally.accepted += int(answer.get("accepted", 0))
        rejects = []
        for item in answer.get("rejected", []):
            planned = batch[item["index"]]
            rejects.append(Reject(planned.rows, f"rejected by ingest: {item.get('reason')}",
                                  message_id=planned.message.get("messageId")).as_json())
        return rejects

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
        for attempt in range(1, self.target.attempts + 1):
            try:
                response = await client.post("/v1/batch", json=body)
                if response.status_code != 429 and response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}"
                wait = retry_after(response) if response.status_code == 429 else None
            except httpx.TransportError as exc:
                problem, wait = describe(exc), None
            if attempt == self.target.attempts:
                break
            backoff = min(self.target.backoff_cap, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(self.target.backoff_cap * 2, wait) if wait is not None else backoff)
        raise ImportStopped(f"{self.target.url} failed {self.target.attempts} times in a row (last: {problem}); "
                            f"{self.point.acknowledged:,} events are in: run again with --resume to go on")

    def _refuse_if_fatal(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        if response.status_code == 401:
            raise ImportStopped(f"{self.target.url} refuses the write key (401: {error_message(response)}); "
                                "pass the right one with --write-key or FUNNELSTREAM_WRITE_KEY")
        raise ImportStopped(f"{self.target.url}/v1/batch answered {response.status_code}: {error_message(response)}")

    def _acknowledged(self, start: int, count: int, rejects: list[dict[str, Any]]) -> None:
        """Rejects go to the file at once; the resume point moves when every earlier batch is in."""
        for reject in rejects:
            self._write_reject(reject)
        if self._rejects_file is not None:
            self._rejects_file.flush()
        self.tally.rejected += len(rejects)
        self._done[start] = (start + count, rejects)
        moved = False
        while self.point.acknowledged in self._done:
            end, held = self._done.pop(self.point.acknowledged)
            self.point.ingest_rejects.extend(held)
            self.point.acknowledged = end
            moved = True
        if moved:
            self.point.accepted = self.tally.accepted
            self.point.save(self.path)
        self._note()
        self.progress.advance(count)

    def _write_reject(self, reject: dict[str, Any]) -> None:
        if self._rejects_file is None:
            self._rejects_file = writable(rejects_path(self.path))
        self._rejects_file.write(json.dumps(reject, ensure_ascii=False, default=str) + "\n")

    def _note(self) -> None:
        self.progress.note(f"rows {self.plan.rows:,}, sent {self.tally.sent:,}, accepted {self.tally.accepted:,}, "
                           f"rejected {self.tally.rejected:,}")


def writable(path: Path) -> TextIO:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise ImportStopped(f"cannot write {path}: {exc.strerror or exc}") from None


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait: `Retry-After` as seconds or as an HTTP date."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "nothing accepts connections there (is the gateway running?)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- the command's flow ---------------------------------------------------------------------------
@dataclass
class Outcome:
    plan: Plan
    tally: Tally
    resumed_from: int
    complete: bool


def run_import(path: Path, fmt: str, mapping_items: list[str], shift_to: str | None, resume: bool, target: Target,
               progress: Reporter, limit: int | None = None, say: Any = print) -> Outcome:
    """Read, plan, pick up the resume point, shift, send; the resume point goes once all is in."""
    mapping = importer.parse_mapping(mapping_items)
    if fmt not in ("auto", *importer.FORMATS):
        raise importer.ImportFileError(f"unknown format {fmt!r}; use auto, {', '.join(importer.FORMATS)}")
    target_time = importer.parse_shift_to(shift_to, datetime.now(UTC)) if shift_to else None
    plan = importer.read(path, fmt, mapping)
    point = ResumePoint(importer.fingerprint(path), plan.format, {"map": mapping, "shift_to": shift_to},
                        importer.iso(target_time) if target_time else None)
    held = ResumePoint.load(path) if resume else None
    if resume and held is None:
        say(f"no resume point for {path}: importing from the start")
    elif held is not None and not held.matches(point):
        raise importer.ImportFileError(f"{ResumePoint.path_of(path)} was made for another version of the file or other "
                                       "options; run without --resume to import it from the start")
    point = held or point
    if point.shift_target:
        importer.shift(plan, datetime.fromisoformat(point.shift_target))
    resumed_from = point.acknowledged
    tally = asyncio.run(Sender(plan, path, point, target, progress, limit).run())
    complete = not tally.stopped_at_limit
    if complete:
        ResumePoint.path_of(path).unlink(missing_ok=True)
    else:
        point.save(path)
    return Outcome(plan, tally, resumed_from, complete)


def summary(path: Path, outcome: Outcome) -> str:
    """The last lines of the command: what went in, what did not, where to look."""
    plan, tally = outcome.plan, outcome.tally
    sent = tally.sent
    rate = f" ({sent / tally.seconds:,.0f} events/s)" if tally.seconds > 0 and sent else ""
    lines = [f"imported {path} ({plan.format}): {plan.rows:,} rows -> {len(plan.messages):,} events; "
             f"sent {sent:,} in {tally.seconds:.1f} s{rate}, accepted {tally.accepted:,}, rejected {tally.rejected:,}"]
    if outcome.resumed_from:
        lines.append(f"resumed after the {outcome.resumed_from:,} events acknowledged before")
    if plan.without_customer:
        lines.append(f"{plan.without_customer:,} rows without a CustomerID: counted, not sent")
    if tally.rejected:
        lines.append(f"rejected rows and why: {rejects_path(path)}")
    if not outcome.complete:
        lines.append(f"stopped after {outcome.tally.sent:,} events as asked (--limit): run again with --resume "
                     "to send the rest")
    return "\n".join(lines)

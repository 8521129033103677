"""`funnelstream`: the operator's command (a console script of the package).

    funnelstream replay --service segmentation
    funnelstream import orders.csv --map total=properties.revenue

Each subcommand is a function that adds its parser and one that runs it; `SUBCOMMANDS` lists
them, so a new one (`import`) is one more pair. Exit codes: 0 ran, 2 usage or environment error
(one line on stderr: unknown service, store or bus unreachable, the service still running).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from tqdm import tqdm

USAGE_ERROR = 2


class CommandError(RuntimeError):
    """A one-line reason the command cannot run (exit 2)."""


class Progress:
    """A progress bar on a terminal (tqdm: rate and ETA), plain lines every few seconds otherwise
    (logs, CI, pipes), and a last line either way."""

    def __init__(self, what: str, unit: str, stream: IO[str] | None = None, every_seconds: float = 5.0) -> None:
        self.what, self.unit = what, unit
        self.stream = stream or sys.stderr
        self.done, self.total = 0, 0
        self.every = every_seconds
        self._last_line = 0.0
        self._printed: tuple[int, int] | None = None
        self._started = time.monotonic()
        self._note = ""
        self._skipped = 0  # done before this run (a resumed import): not part of the rate
        self._bar = tqdm(desc=what, unit=f" {unit}", file=self.stream, dynamic_ncols=True) if self.stream.isatty() else None

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif time.monotonic() - self._last_line >= self.every:
            self._line()

    def start_at(self, done: int) -> None:
        """Done before this run began (a resumed import)."""
        self.done = self._skipped = done
        self._started = time.monotonic()
        if self._bar is not None:
            self._bar.initial = self._bar.n = done
            self._bar.refresh()

    def note(self, text: str) -> None:
        """More counts beside the bar (import: rows, sent, accepted, rejected)."""
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif (self.total or self.done) and self._printed != (self.done, self.total):
            self._line()  # the final count (a command that failed before starting prints only why)

    def _line(self) -> None:
        self._last_line = time.monotonic()
        self._printed = (self.done, self.total)
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        print(f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{share}{self._pace()}"
              f"{'; ' + self._note if self._note else ''}", file=self.stream, flush=True)

    def _pace(self) -> str:
        """Rate and time left, as the bar shows them, once there is something to measure."""
        seconds = time.monotonic() - self._started
        if self.done <= self._skipped or seconds < 1:
            return ""
        rate = (self.done - self._skipped) / seconds
        left = f", {(self.total - self.done) / rate:.0f} s left" if self.total > self.done else ""
        return f", {rate:,.0f} {self.unit}/s{left}"


# -- replay ---------------------------------------------------------------------------------------
def add_replay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay", help="rebuild a stopped service's store from the bus, from offset 0",
        description="Rebuild a service's store from the bus from offset 0. Stop the service first and "
                    "run this with the same settings (environment variables) as the service.")
    parser.add_argument("--service", required=True, metavar="NAME", help="segmentation, funnel or recommendation")
    parser.set_defaults(run=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    from services import replay
    from shared.observability import configure_logging

    configure_logging("WARNING", "text")  # the progress is the output; problems still show
    try:
        spec = replay.spec_of(args.service)
    except replay.ReplayError as exc:
        raise CommandError(str(exc)) from None
    progress = Progress(f"replay {spec.name}", "records")
    try:
        summary = asyncio.run(replay.replay(spec, progress))
    except replay.ReplayError as exc:
        raise CommandError(str(exc)) from None
    finally:
        progress.close()
    kept = f"; kept {', '.join(summary.kept)}" if summary.kept else ""
    print(f"replayed {summary.records:,} records of {', '.join(summary.topics)} into {spec.name}'s store "
          f"in {summary.seconds:.1f} s{kept}; start {spec.name} again", file=sys.stderr)
    return 0


# -- import ---------------------------------------------------------------------------------------
def add_import(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from services.import_client import DEFAULT_URL, DEFAULT_WRITE_KEY

    parser = commands.add_parser(
        "import", help="send a history file (jsonl, csv, Online Retail) through the ingest API",
        description="Send a history file through the ingest API, as the SDKs do. Importing the same file "
                    "again changes nothing (message ids derive from its rows). Rejected rows and why: "
                    "PATH.rejects.jsonl; how far it got: PATH.import-state.json (for --resume).")
    parser.add_argument("path", metavar="PATH", help="the file: .jsonl, .csv, .csv.gz or .xlsx")
    parser.add_argument("--format", default="auto", metavar="FORMAT",
                        help="auto (by name and header), csv, jsonl or online-retail (default: auto)")
    parser.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                        help="csv: the column holds this Segment field (properties.X, traits.X, context.X, "
                             "userId, ...), or - to leave it out; repeat for more columns")
    parser.add_argument("--url", default=os.environ.get("FUNNELSTREAM_URL", DEFAULT_URL),
                        help="the gateway (default: $FUNNELSTREAM_URL or %(default)s)")
    parser.add_argument("--write-key", default=os.environ.get("FUNNELSTREAM_WRITE_KEY", DEFAULT_WRITE_KEY),
                        metavar="KEY", help="ingest write key (default: $FUNNELSTREAM_WRITE_KEY or the dev key)")
    parser.add_argument("--shift-to", metavar="now|ISO-DATE",
                        help="move every event in time so the latest lands at this moment (gaps kept)")
    parser.add_argument("--resume", action="store_true", help="go on from the last acknowledged batch")
    parser.add_argument("--batch-size", type=int, default=250, metavar="N",
                        help="messages per request, several requests in flight (default: %(default)s)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="send only the next N events, then stop (--resume sends the rest)")
    parser.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> int:
    from services import import_client, importer

    path = Path(args.path)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 0):
        raise CommandError("--batch-size must be at least 1 and --limit at least 0")
    target = import_client.Target(url=args.url.rstrip("/"), write_key=args.write_key, batch_messages=args.batch_size)
    progress = Progress(f"import {path.name}", "events")
    try:
        outcome = import_client.run_import(path, args.format, args.map, args.shift_to, args.resume, target,
                                           progress, args.limit, say=lambda line: print(line, file=sys.stderr))
    except (importer.ImportFileError, import_client.ImportStopped) as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        progress.close()
        print(f"funnelstream import: what the server acknowledged is kept in "
              f"{import_client.ResumePoint.path_of(path)}: run again with --resume to go on", file=sys.stderr)
        raise
    finally:
        progress.close()
    print(import_client.summary(path, outcome), file=sys.stderr)
    return 0


# -- the command ----------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [add_replay, add_import]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="funnelstream", description="Funnelstream operations.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # usage errors exit 2 here
    from shared.settings import SettingsError

    try:
        code: int = args.run(args)
        return code
    except CommandError as exc:
        print(f"funnelstream {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"funnelstream {args.command}: error: {problem}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"funnelstream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

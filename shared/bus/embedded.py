"""The embedded bus: Kafka's semantics in one SQLite file, for one machine and no servers.

- A topic has N partitions; a record goes to the partition of its key and gets the next offset of
  that partition (contiguous, from 0), so one key's records keep their order.
- A consumer group stores, per partition, the offset of the next record to read. Members of a group
  heartbeat into a table; every member derives the same target assignment from the sorted list of
  live members. A member releases partitions that are no longer its target when it next polls, and
  claims a target partition only once nobody owns it, so no partition is ever read by two members
  at once (Kafka's rebalance, in a table). A member that stops or dies (no heartbeat for
  `session_timeout` seconds) has its partitions taken over.
- The file is in WAL mode, so several processes can read while one writes.

All SQLite calls run on one worker thread per bus, so the event loop never blocks on disk.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from shared.bus.base import OutgoingRecord, Record, TopicPartition, partition_for

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partition_ends (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, headers TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (
    grp TEXT NOT NULL, member TEXT NOT NULL, heartbeat REAL NOT NULL, topics TEXT NOT NULL,
    PRIMARY KEY (grp, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_owners (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
"""

# How often a waiting consumer looks for records written by other processes.
CROSS_PROCESS_POLL_SECONDS = 0.05
# Beyond the kernel's clock tick for file times (1-10 ms), with a margin for clock adjustments.
STAMP_SETTLE_SECONDS = 0.05


def dump_headers(headers: dict[str, str]) -> str:
    """Headers as the log keeps them: JSON text (orjson: every record of every batch pays this)."""
    return orjson.dumps(headers).decode()


class EmbeddedBus:
    def __init__(self, path: Path | str, partitions: int = 8, session_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.partitions = partitions
        self.session_timeout = session_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._topics: dict[str, int] = {}
        self._published: asyncio.Future[None] | None = None  # done at the next publish from this process
        self._appends = 0  # publishes by this bus: part of `log_stamp`
        self._log_files = (str(self.path), f"{self.path}-wal")  # stamped: the file and its write-ahead log

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._executor is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-bus")
        await self._run(self._open)

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA secure_delete=ON")  # deleted records (erasure, retention) are zeroed, not left in free pages
        conn.executescript(SCHEMA)
        self._conn = conn

    async def stop(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the embedded bus is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    # -- topics ----------------------------------------------------------------------------------
    def _ensure_topic(self, topic: str) -> int:
        if topic not in self._topics:
            db = self._db()
            db.execute("INSERT OR IGNORE INTO topics VALUES (?, ?)", (topic, self.partitions))
            (count,) = db.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
            self._topics[topic] = count
        return self._topics[topic]

    async def ensure_topics(self, topics: list[str]) -> None:
        await self._run(lambda: [self._ensure_topic(t) for t in topics])

    # -- keeping the log to what may be kept (shared/bus/maintenance.py) --------------------------
    async def edit_log(self, work: Callable[[LogEditor], T], write: bool = True) -> T:
        """Run `work` on the bus thread in one transaction: a writer's (BEGIN IMMEDIATE) when
        `write`, so processes sharing the file take turns and a crash leaves the log as it was."""
        return await self._run(self._in_transaction, work, write)

    def _in_transaction(self, work: Callable[[LogEditor], T], write: bool) -> T:
        db = self._db()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(LogEditor(db))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    async def scan_log(self, work: Callable[[LogEditor], T]) -> T:
        """Run `work` in a read transaction on a connection of its own, in a thread of its own:
        a long read (a pass over the whole log) holds up neither writers (WAL) nor this bus."""
        return await asyncio.to_thread(self._scan, work)

    def _scan(self, work: Callable[[LogEditor], T]) -> T:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN")
            try:
                return work(LogEditor(conn))
            finally:
                conn.execute("ROLLBACK")
        finally:
            conn.close()

    async def checkpoint(self) -> None:
        """Copy the write-ahead log into the file and truncate it, so the -wal file keeps no page
        an erasure or retention deleted (best effort: readers in progress can hold it open)."""
        await self._run(lambda: self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())

    async def apply_retention(self, older_than_ms: int) -> int:
        """Delete records appended before `older_than_ms` that every consumer group of their
        topic has committed past; dead letter topics no group reads, by age alone. Returns how
        many went."""
        return await self.edit_log(lambda editor: editor.apply_retention(older_than_ms))

    # -- producing -------------------------------------------------------------------------------
    async def publish(self, records: list[OutgoingRecord]) -> None:
        if not records:
            return
        await self._run(self._append, records)
        self._appends += 1
        if self._published is not None and not self._published.done():
            self._published.set_result(None)
        self._published = None

    def _append(self, records: list[OutgoingRecord]) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            ends: dict[TopicPartition, int] = {}
            rows = []
            now_ms = int(time.time() * 1000)
            for rec in records:
                tp = (rec.topic, partition_for(rec.key, self._ensure_topic(rec.topic)))
                if tp not in ends:
                    row = db.execute(
                        "SELECT next_offset FROM partition_ends WHERE topic = ? AND partition = ?", tp
                    ).fetchone()
                    ends[tp] = row[0] if row else 0
                rows.append((*tp, ends[tp], rec.key, rec.value, dump_headers(rec.headers), now_ms))
                ends[tp] += 1
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany(
                "INSERT INTO partition_ends VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                "DO UPDATE SET next_offset = excluded.next_offset",
                [(t, p, end) for (t, p), end in ends.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def log_stamp(self) -> tuple[object, ...] | None:
        """Changes whenever a record may have been appended since it was taken: by this bus, or by
        another process, whose commit writes the write-ahead log (or the file itself, without
        WAL). Two stats on the event loop, no SQLite call: an idle consumer looks at it 20 times a
        second, where a look at the log is a thread hop and a query per partition.

        None while a file changed in the last STAMP_SETTLE_SECONDS: the kernel keeps file times
        at its clock tick (a few ms), and a WAL reused from its start keeps its size, so a second
        append in the same tick could leave the stamp as it was."""
        files = [_file_stamp(path) for path in self._log_files]
        settled = time.time_ns() - int(STAMP_SETTLE_SECONDS * 1e9)
        if any(file is not None and file[1] > settled for file in files):
            return None
        return self._appends, *files

    async def wait_for_records(self, timeout: float) -> None:
        """Wake on a publish from this process, or after a short poll for other processes. On a
        future rather than an event: wait_for would wrap the event's wait in a task, 20 times a
        second for each idle consumer."""
        if self._published is None:
            self._published = asyncio.get_running_loop().create_future()
        await asyncio.wait((self._published,), timeout=min(timeout, CROSS_PROCESS_POLL_SECONDS))

    # -- consuming -------------------------------------------------------------------------------
    def consumer(self, group: str, topics: list[str]) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, group, topics)

    async def ping(self) -> None:
        await self._run(lambda: self._db().execute("SELECT 1").fetchone())

    async def lag(self, group: str, topics: list[str]) -> dict[TopicPartition, int]:
        return await self._run(self._lag, group, topics)

    def _lag(self, group: str, topics: list[str]) -> dict[TopicPartition, int]:
        lags: dict[TopicPartition, int] = {}
        for topic in topics:
            for p in range(self._ensure_topic(topic)):
                # From the first record still there: erasure and retention leave gaps (at the end
                # of a partition too, where no later record would let the group commit past them).
                # A gap inside the range counts; the lag is exact at 0, where it matters most.
                (first,) = self._db().execute(
                    'SELECT min("offset") FROM records WHERE topic = ? AND partition = ? AND "offset" >= ?',
                    (topic, p, self._committed(group, topic, p) or 0)).fetchone()
                lags[(topic, p)] = 0 if first is None else self._end_offset(topic, p) - first
        return lags

    def _end_offset(self, topic: str, partition: int) -> int:
        row = self._db().execute(
            "SELECT next_offset FROM partition_ends WHERE topic = ? AND partition = ?", (topic, partition)
        ).fetchone()
        return row[0] if row else 0

    def _committed(self, group: str, topic: str, partition: int) -> int | None:
        row = self._db().execute(
            'SELECT "offset" FROM group_offsets WHERE grp = ? AND topic = ? AND partition = ?',
            (group, topic, partition),
        ).fetchone()
        return row[0] if row else None

    # Called on the bus thread by consumers.
    def _rebalance(
        self, group: str, member: str, topics: list[str]
    ) -> tuple[set[TopicPartition], set[TopicPartition]]:
        """Heartbeat, release what is no longer ours, claim what is free; returns (owned, target)."""
        db = self._db()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO group_members VALUES (?, ?, ?, ?)", (group, member, now, json.dumps(topics)))
            db.execute("DELETE FROM group_members WHERE grp = ? AND heartbeat < ?", (group, now - self.session_timeout))
            db.execute(
                "DELETE FROM group_owners WHERE grp = ? AND member NOT IN (SELECT member FROM group_members WHERE grp = ?)",
                (group, group),
            )
            target = self._target(group, member, topics)
            owned = self._owned(group, member)
            db.executemany(
                "DELETE FROM group_owners WHERE grp = ? AND topic = ? AND partition = ? AND member = ?",
                [(group, *tp, member) for tp in owned - target],
            )
            db.executemany(
                "INSERT OR IGNORE INTO group_owners VALUES (?, ?, ?, ?)", [(group, *tp, member) for tp in target]
            )
            owned = self._owned(group, member)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return owned, target

    def _target(self, group: str, member: str, topics: list[str]) -> set[TopicPartition]:
        """Our share: each topic's partitions dealt in turn to the members subscribed to it."""
        rows = self._db().execute("SELECT member, topics FROM group_members WHERE grp = ? ORDER BY member", (group,))
        subscriptions = [(m, set(json.loads(t))) for m, t in rows]
        target = set()
        for topic in topics:
            subscribers = [m for m, subscribed in subscriptions if topic in subscribed]
            me = subscribers.index(member)
            target |= {(topic, p) for p in range(self._ensure_topic(topic)) if p % len(subscribers) == me}
        return target

    def _owned(self, group: str, member: str) -> set[TopicPartition]:
        rows = self._db().execute(
            "SELECT topic, partition FROM group_owners WHERE grp = ? AND member = ?", (group, member)
        )
        return {(t, p) for t, p in rows}

    def _leave(self, group: str, member: str) -> None:
        self._db().execute("DELETE FROM group_owners WHERE grp = ? AND member = ?", (group, member))
        self._db().execute("DELETE FROM group_members WHERE grp = ? AND member = ?", (group, member))

    def _fetch(self, tp: TopicPartition, start: int, limit: int) -> list[Record]:
        topic, partition = tp
        rows = self._db().execute(
            'SELECT "offset", key, value, headers, ts FROM records '
            'WHERE topic = ? AND partition = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?',
            (topic, partition, start, limit),
        ).fetchall()
        loads = orjson.loads  # every record of every consumer: no attribute lookups per row
        return [Record(topic, partition, o, k, v, loads(h), ts) for o, k, v, h, ts in rows]

    def _commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        self._db().executemany(
            'INSERT INTO group_offsets VALUES (?, ?, ?, ?) ON CONFLICT (grp, topic, partition) DO UPDATE SET "offset" = excluded."offset"',
            [(group, t, p, o) for (t, p), o in offsets.items()],
        )

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """One partition from `offset` on, outside any consumer group (a plain SELECT)."""
        return await self._run(self._fetch, (topic, partition), offset, limit)


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


class EmbeddedConsumer:
    """One member of a consumer group on the embedded bus."""

    HEARTBEAT_SECONDS = 1.0

    def __init__(self, bus: EmbeddedBus, group: str, topics: list[str]) -> None:
        self.bus = bus
        self.group = group
        self.topics = sorted(topics)
        self.member = f"{uuid.uuid4()}"
        self._positions: dict[TopicPartition, int] = {}
        self._seeks: dict[TopicPartition, int] = {}
        self._last_heartbeat = 0.0
        self._interval = self.HEARTBEAT_SECONDS
        self._looked_at: tuple[object, ...] | None = None  # the log's stamp when a look found nothing

    async def start(self) -> None:
        await self.bus.ensure_topics(self.topics)
        await self._rebalance()

    async def stop(self) -> None:
        await self.bus._run(self.bus._leave, self.group, self.member)
        self._positions.clear()

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    async def _rebalance(self) -> None:
        owned, target = await self.bus._run(self.bus._rebalance, self.group, self.member, self.topics)
        self._last_heartbeat = time.monotonic()
        self._looked_at = None  # positions may have moved; and a look at least once a heartbeat
        # Until we own our whole share, look again soon: the previous owner releases at its next poll.
        self._interval = self.HEARTBEAT_SECONDS if owned == target else 0.1
        for tp in set(self._positions) - owned:
            del self._positions[tp]
        for tp in owned - set(self._positions):
            committed = await self.bus._run(self.bus._committed, self.group, *tp)
            self._positions[tp] = committed or 0
        for tp in owned & set(self._seeks):
            self._positions[tp] = self._seeks.pop(tp)

    async def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() - self._last_heartbeat >= self._interval:
                await self._rebalance()
            stamp = self.bus.log_stamp()  # before the look: an append after it changes the stamp
            if stamp is None or stamp != self._looked_at:  # else nothing appended since a look found nothing
                records = await self.bus._run(self._fetch_assigned, max_records)
                if records:
                    return records
                self._looked_at = stamp
            if time.monotonic() >= deadline:
                return []
            await self.bus.wait_for_records(deadline - time.monotonic())

    def _fetch_assigned(self, max_records: int) -> list[Record]:
        """Up to max_records, shared fairly across assigned partitions; what empty partitions
        leave of their share goes to the busy ones (else a member of a group on several topics,
        most of them quiet, would get batches of a few dozen records: many small transactions)."""
        out: list[Record] = []
        busy = list(self._positions)
        while busy and len(out) < max_records:
            share = max(1, (max_records - len(out)) // len(busy))
            still_busy = []
            for tp in busy:
                batch = self.bus._fetch(tp, self._positions[tp], min(share, max_records - len(out)))
                if batch:
                    self._positions[tp] = batch[-1].offset + 1
                    out.extend(batch)
                if len(batch) == share:
                    still_busy.append(tp)  # may hold more
                if len(out) >= max_records:
                    break
            busy = still_busy
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.bus._run(self.bus._commit, self.group, offsets)

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self._looked_at = None
        if (topic, partition) in self._positions:
            self._positions[(topic, partition)] = offset
        else:
            self._seeks[(topic, partition)] = offset


class LogEditor:
    """What maintenance may do to the log, inside one transaction of `EmbeddedBus.edit_log` (on
    the bus's connection) or `EmbeddedBus.scan_log` (a read-only connection of its own)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def records_with_header(self, topic: str, name: str, value: str, start: dict[int, int]) -> list[Record]:
        """The topic's records whose header `name` is `value`, from `start` (partition -> offset,
        0 when absent) on, in partition and offset order."""
        found = []
        for partition in range(self.partitions(topic)):
            rows = self.db.execute(
                'SELECT "offset", key, value, headers, ts FROM records WHERE topic = ? AND partition = ? '
                'AND "offset" >= ? AND instr(headers, ?) > 0 ORDER BY "offset"',
                (topic, partition, start.get(partition, 0), orjson.dumps(value).decode()),
            ).fetchall()
            found += [Record(topic, partition, o, k, v, orjson.loads(h), ts) for o, k, v, h, ts in rows]
        return [r for r in found if r.headers.get(name) == value]

    def header_of(self, record: Record, name: str) -> str | None:
        """The header as the record holds it now (another process may have rewritten it)."""
        row = self.db.execute('SELECT headers FROM records WHERE topic = ? AND partition = ? AND "offset" = ?',
                              (record.topic, record.partition, record.offset)).fetchone()
        value = json.loads(row[0]).get(name) if row else None
        return str(value) if value is not None else None

    def partitions(self, topic: str) -> int:
        row = self.db.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
        return int(row[0]) if row else 0

    def end_offset(self, topic: str, partition: int) -> int:
        row = self.db.execute("SELECT next_offset FROM partition_ends WHERE topic = ? AND partition = ?",
                              (topic, partition)).fetchone()
        return int(row[0]) if row else 0

    def committed(self, group: str, topic: str, partition: int) -> int:
        row = self.db.execute('SELECT "offset" FROM group_offsets WHERE grp = ? AND topic = ? AND partition = ?',
                              (group, topic, partition)).fetchone()
        return int(row[0]) if row else 0

    def groups_of(self, topic: str) -> set[str]:
        """Consumer groups of a topic: those that committed an offset on it, and those with a
        live member subscribed to it (a new group reads from 0 before its first commit)."""
        committed = {g for (g,) in self.db.execute("SELECT DISTINCT grp FROM group_offsets WHERE topic = ?", (topic,))}
        subscribed = {g for (g,) in self.db.execute(
            "SELECT DISTINCT grp FROM group_members WHERE instr(topics, ?) > 0", (json.dumps(topic),))}
        return committed | subscribed

    def read_by_every_group(self, record: Record) -> bool:
        """Has every consumer group of the record's topic committed past it?"""
        return all(self.committed(g, record.topic, record.partition) > record.offset
                   for g in self.groups_of(record.topic))

    def replace(self, record: Record, new: OutgoingRecord) -> None:
        """The record at the same place (topic, partition, offset) holds `new` instead."""
        self.db.execute(
            'UPDATE records SET key = ?, value = ?, headers = ? WHERE topic = ? AND partition = ? AND "offset" = ?',
            (new.key, new.value, dump_headers(new.headers), record.topic, record.partition, record.offset),
        )

    def records_about(self, appended_until: dict[str, int], names: Callable[[bytes, set[str]], bool]
                      ) -> list[tuple[str, int, int]]:
        """(topic, partition, offset) of every record, in every topic (dead letters included),
        about one of the ids and appended up to its time (`appended_until`: id -> ms): keyed by
        it, or whose payload `names` it (only payloads holding it as a JSON string are decoded).
        One pass over the log however many ids."""
        if not appended_until:
            return []
        mention = re.compile(b"|".join(re.escape(orjson.dumps(i)) for i in sorted(appended_until, key=len, reverse=True)))
        found = []
        for topic, partition, offset, key, value, ts in self.db.execute(
                'SELECT topic, partition, "offset", key, value, ts FROM records'):
            if key in appended_until:
                if ts <= appended_until[key]:
                    found.append((topic, partition, offset))
            elif mention.search(value):
                named = {i for i in appended_until if ts <= appended_until[i]}
                if named and names(value, named):
                    found.append((topic, partition, offset))
        return found

    def delete(self, records: list[tuple[str, int, int]]) -> int:
        """Delete these records (topic, partition, offset); returns how many were still there."""
        deleted = 0
        for place in records:
            deleted += self.db.execute(
                'DELETE FROM records WHERE topic = ? AND partition = ? AND "offset" = ?', place).rowcount
        return deleted

    def apply_retention(self, older_than_ms: int) -> int:
        """Per partition, delete from its start up to the first record every group has still to
        read or appended since `older_than_ms`, whichever comes first (offsets and append times
        grow together, so both walks stop at the first record kept)."""
        deleted = 0
        for topic, partitions in self.db.execute("SELECT name, partitions FROM topics").fetchall():
            groups = self.groups_of(topic)
            for partition in range(partitions):
                if groups:
                    limit = min(self.committed(g, topic, partition) for g in groups)
                elif topic.endswith(".dlq"):
                    limit = self.end_offset(topic, partition)
                else:
                    continue  # nobody has read it yet: keep it for the group that will
                young = self.db.execute(
                    'SELECT "offset" FROM records WHERE topic = ? AND partition = ? AND ts >= ? ORDER BY "offset" LIMIT 1',
                    (topic, partition, older_than_ms)).fetchone()
                if young is not None:
                    limit = min(limit, young[0])
                deleted += self.db.execute(
                    'DELETE FROM records WHERE topic = ? AND partition = ? AND "offset" < ?',
                    (topic, partition, limit)).rowcount
        return deleted

"""The Kafka bus: the `Bus` interface on a Kafka-wire cluster (Apache Kafka, Redpanda, Tansu).

- Records are placed with `partition_for` (not Kafka's murmur2 partitioner), so the embedded and the
  Kafka backends put a key on the same partition.
- Topics are created on first use with `partitions` partitions; a consumer creates its topics before
  it subscribes, so it can start before any producer.
- Offsets are committed explicitly; after a rebalance or a restart a member resumes at the group's
  committed offsets (at least once).

Tansu works, with `idempotent=False` (it fails InitProducerId); two of its quirks are handled here,
see `KafkaBus._end_offsets` and `_unannounced_member`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, TopicAlreadyExistsError, for_code
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import ConsumerRecord

from shared.bus.base import OutgoingRecord, Record, TopicPartition, partition_for
from shared.bus.shredding import KEYS_TOPIC, KEYS_TOPIC_CONFIGS, KeyRing

log = logging.getLogger("funnelstream.bus.kafka")

# Group timings short enough that a member joining or leaving rebalances in seconds, not minutes.
# (Tansu answers a JoinGroup after about half the session timeout: 5 s at 10 s, 3 s at 6 s.)
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 1_000
# A member that does not poll for this long is considered stuck and leaves the group.
MAX_POLL_INTERVAL_MS = 60_000
PING_TIMEOUT_SECONDS = 3.0
HIGH_WATERMARK_TIMEOUT_SECONDS = 5.0
# A publisher reads the keys topic again at least this often, so it stops sealing with the keys of
# a customer another process has just shredded (their next records get a new key).
KEYS_FRESH_SECONDS = 5.0

TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


class KafkaBus:
    def __init__(
        self,
        bootstrap_servers: str,
        partitions: int = 8,
        idempotent: bool = True,
        replication_factor: int = 1,
        client_id: str = "funnelstream",
        *,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
        retention_days: float = 0,
        keyring: KeyRing | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.retention_days = retention_days
        # With a key ring, records are sealed with their customer's key (see shared/bus/shredding.py).
        self.keyring = keyring
        self._keys_lock = asyncio.Lock()
        self._keys_reader: AIOKafkaConsumer | None = None
        self._keys_read_at = 0.0
        self.partitions = partitions
        self.idempotent = idempotent
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        # A group-less consumer, used only to read partition end offsets for `lag`.
        self._offsets_reader: AIOKafkaConsumer | None = None
        self._offsets_lock = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._topics_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=self.idempotent,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # release its connections and background tasks
            raise
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        reader, self._offsets_reader = self._offsets_reader, None
        keys_reader, self._keys_reader = self._keys_reader, None
        if keys_reader is not None:
            await keys_reader.stop()
        if producer is not None:
            await producer.stop()
        if reader is not None:
            await reader.stop()
        if admin is not None:
            await admin.close()

    # -- topics ----------------------------------------------------------------------------------
    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that do not exist yet, with `partitions` partitions each."""
        missing = set(topics) - self._known_topics
        if not missing:
            return
        async with self._topics_lock:
            missing -= self._known_topics
            if not missing:
                return
            admin = await self._admin_client()
            existing = set(await admin.list_topics())
            to_create = sorted(missing - existing)
            if to_create:
                await self._create_topics(admin, to_create)
            self._known_topics |= missing

    async def _create_topics(self, admin: AIOKafkaAdminClient, topics: list[str]) -> None:
        new_topics = [NewTopic(t, self.partitions, self.replication_factor, topic_configs=self.topic_configs())
                      if t != KEYS_TOPIC else NewTopic(t, 1, self.replication_factor, topic_configs=KEYS_TOPIC_CONFIGS)
                      for t in topics]
        try:
            response = await admin.create_topics(new_topics)
        except TopicAlreadyExistsError:
            return  # another process created them first
        # Errors come back per topic in the response rather than as an exception.
        for topic, code, message, *_ in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise for_code(code)(f"cannot create topic {topic}: {message}")
        log.info("created topics %s with %d partitions", topics, self.partitions)

    def topic_configs(self) -> dict[str, str]:
        """`retention.ms` of the topics the bus creates: BUS_RETENTION_DAYS, or -1 (for ever, the
        default: replay from offset 0 needs the whole history) when 0. Kafka's own retention
        does not wait for consumer groups, as the embedded log's does: keep it above their lag."""
        days = self.retention_days
        return {"retention.ms": str(int(days * 86_400_000) if days > 0 else -1)}

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, client_id=self.client_id
            )
            try:
                await admin.start()
            except BaseException:
                await admin.close()  # only a client that did connect is kept
                raise
            self._admin = admin
        return self._admin

    # -- producing -------------------------------------------------------------------------------
    async def publish(self, records: list[OutgoingRecord]) -> None:
        if not records:
            return
        producer = self._started_producer()
        topics = {r.topic for r in records}
        await self.ensure_topics(topics)
        # The topic's real partition count, which may differ from `partitions` if made elsewhere.
        counts = {t: len(await producer.partitions_for(t)) for t in topics}
        if self.keyring is not None:
            kids = await self._kids_for(sorted({r.key for r in records}))
            await self._send([(r.topic, self.keyring.seal(kids[r.key], r), kids[r.key].encode(),
                               partition_for(r.key, counts[r.topic]), []) for r in records])
            return
        await self._send([(r.topic, r.value, r.key.encode(), partition_for(r.key, counts[r.topic]),
                           [(k, v.encode()) for k, v in r.headers.items()]) for r in records])

    async def _send(self, items: list[tuple[str, bytes | None, bytes, int, list[tuple[str, bytes]]]]) -> None:
        """(topic, value, key, partition, headers) each; returns once every one is stored."""
        producer = self._started_producer()
        # Queue everything first, then wait: one round trip per batch, not per record.
        deliveries = [
            await producer.send(topic, value, key=key, partition=partition, headers=headers)
            for topic, value, key, partition, headers in items
        ]
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- sealing and shredding (shared/bus/shredding.py) -----------------------------------------
    async def _kids_for(self, customers: list[str]) -> dict[str, str]:
        """The key each customer's new records are sealed with; new keys are stored first."""
        assert self.keyring is not None
        async with self._keys_lock:
            # Another process may have made their keys, or shredded them (then new ones are made).
            stale = asyncio.get_running_loop().time() - self._keys_read_at > KEYS_FRESH_SECONDS
            if stale or any(self.keyring.kid_for(c) is None for c in customers):
                await self._sync_keys()
            new = [(c, *self.keyring.new_key(c)) for c in customers if self.keyring.kid_for(c) is None]
            if new:
                await self._send([(KEYS_TOPIC, value, kid.encode(), 0, []) for _, kid, value in new])
                for _, made, value in new:
                    self.keyring.apply(made, value)
            return {c: kid for c in customers if (kid := self.keyring.kid_for(c)) is not None}

    async def shred(self, customers: list[str]) -> int:
        """Destroy every key of these customers (ids): their records can no longer be read by
        anyone. Returns how many keys went."""
        if self.keyring is None:
            return 0
        async with self._keys_lock:
            await self._sync_keys()
            kids = self.keyring.kids_to_shred(customers)
            if kids:
                await self._send([(KEYS_TOPIC, None, kid.encode(), 0, []) for kid in kids])
            for kid in kids:
                self.keyring.apply(kid, None)
        return len(kids)

    async def _sync_keys(self) -> None:
        """Read the keys topic from where this client left off to its end."""
        assert self.keyring is not None
        await self.ensure_topics([KEYS_TOPIC])
        tp = KafkaTopicPartition(KEYS_TOPIC, 0)
        if self._keys_reader is None:
            reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, client_id=self.client_id,
                                      fetch_max_wait_ms=50, auto_offset_reset="earliest")
            await reader.start()
            reader.assign([tp])
            self._keys_reader = reader
        reader = self._keys_reader
        reader.seek(tp, self.keyring.position)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HIGH_WATERMARK_TIMEOUT_SECONDS
        while True:
            batch = await reader.getmany(tp, timeout_ms=100, max_records=10_000)
            for message in batch.get(tp, []):
                self.keyring.apply(message.key.decode(), message.value)
                self.keyring.position = message.offset + 1
            highwater = reader.highwater(tp)
            if highwater is not None and await reader.position(tp) >= highwater:
                self.keyring.position = max(self.keyring.position, await reader.position(tp))
                self._keys_read_at = loop.time()
                return
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {KEYS_TOPIC} to its end")

    async def _opened(self, records: list[Record]) -> list[Record]:
        """Sealed records as they were published (placeholders once shredded)."""
        if self.keyring is None:
            return records
        kids = {kid for r in records if (kid := KeyRing.kid_of(r.value)) is not None}
        if kids - self.keyring.keys.keys():
            async with self._keys_lock:
                await self._sync_keys()
        return [self.keyring.open(r.topic, r.partition, r.offset, r.value, r.timestamp_ms)
                if KeyRing.kid_of(r.value) is not None else r for r in records]

    async def groups_committed(self, topic: str) -> dict[str, dict[int, int]]:
        """Every consumer group that committed an offset on `topic`: partition -> offset."""
        admin = await self._admin_client()
        tps = await self._topic_partitions(admin, [topic])
        found: dict[str, dict[int, int]] = {}
        for group, *_ in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            offsets = {tp.partition: meta.offset for tp, meta in committed.items() if meta is not None and meta.offset >= 0}
            if offsets:
                found[group] = offsets
        return found

    def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaBus.start() was not called")
        return self._producer

    # -- consuming -------------------------------------------------------------------------------
    def consumer(self, group: str, topics: list[str]) -> KafkaConsumer:
        return KafkaConsumer(self, group, topics)

    async def _leave_group(self, group: str, member_id: str) -> None:
        """Best effort, like aiokafka's own: at worst the group waits out the session timeout."""
        try:
            admin = await self._admin_client()
            coordinator = await admin.find_coordinator(group)
            response = await admin._send_request(LeaveGroupRequest(group, member_id), coordinator)
            if response.error_code:
                raise for_code(response.error_code)()
        except Exception as e:
            log.warning("LeaveGroup for %s in %s failed: %r", member_id, group, e)

    # -- health and metrics ----------------------------------------------------------------------
    async def ping(self) -> None:
        async def fetch_metadata() -> None:
            admin = await self._admin_client()
            await admin.describe_cluster()

        await asyncio.wait_for(fetch_metadata(), PING_TIMEOUT_SECONDS)

    async def lag(self, group: str, topics: list[str]) -> dict[TopicPartition, int]:
        await self.ensure_topics(topics)
        admin = await self._admin_client()
        tps = await self._topic_partitions(admin, topics)
        # Partitions must be listed: Tansu drops the connection on "all partitions of the group".
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        async with self._offsets_lock:  # the reader's assignment is shared state
            reader = await self._reader()
            beginnings = await reader.beginning_offsets(tps)
            ends = await self._end_offsets(reader, tps)
        lags: dict[TopicPartition, int] = {}
        for tp in tps:
            meta = committed.get(tp)
            # No commit yet (-1): the group will start at the beginning of the log.
            start = meta.offset if meta is not None and meta.offset >= 0 else beginnings[tp]
            lags[(tp.topic, tp.partition)] = max(ends[tp] - start, 0)
        return lags

    async def _topic_partitions(
        self, admin: AIOKafkaAdminClient, topics: list[str]
    ) -> list[KafkaTopicPartition]:
        tps = []
        for description in await admin.describe_topics(topics):
            if description["error_code"]:
                raise for_code(description["error_code"])(f"topic {description['topic']}")
            for p in description["partitions"]:
                tps.append(KafkaTopicPartition(description["topic"], p["partition"]))
        return sorted(tps)

    async def _end_offsets(
        self, reader: AIOKafkaConsumer, tps: list[KafkaTopicPartition]
    ) -> dict[KafkaTopicPartition, int]:
        """The offset after each partition's last record.

        Tansu answers ListOffsets(latest) with the first offset of the last record batch + 1, which
        is too small when that batch holds several records. A fetch from there returns the right
        end as its high watermark, so take the larger of the two (on Kafka they are equal).
        """
        listed = await reader.end_offsets(tps)
        reader.assign(tps)  # a fresh assignment: no high watermark left from an earlier call
        try:
            for tp in tps:
                reader.seek(tp, listed[tp])
            deadline = asyncio.get_running_loop().time() + HIGH_WATERMARK_TIMEOUT_SECONDS
            while any(reader.highwater(tp) is None for tp in tps):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"no high watermark for {tps}")
                await reader.getmany(timeout_ms=100)
            return {tp: max(listed[tp], reader.highwater(tp) or 0) for tp in tps}
        finally:
            reader.unsubscribe()  # stop its background fetching

    async def _reader(self) -> AIOKafkaConsumer:
        if self._offsets_reader is None:
            reader = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                fetch_max_wait_ms=50,  # only fetched for the high watermark: don't long-poll
            )
            try:
                await reader.start()
            except BaseException:
                await reader.stop()
                raise
            self._offsets_reader = reader
        return self._offsets_reader

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """One partition from `offset` on with the group-less reader: assign and seek, no group,
        nothing committed. Stops at `limit` records or at the partition's high watermark."""
        await self.ensure_topics([topic])
        tp = KafkaTopicPartition(topic, partition)
        async with self._offsets_lock:  # the reader's assignment is shared state
            reader = await self._reader()
            reader.assign([tp])
            try:
                start = (await reader.beginning_offsets([tp]))[tp]
                reader.seek(tp, max(offset, start))
                records = await self._read_assigned(reader, tp, limit)
            finally:
                reader.unsubscribe()  # stop its background fetching
        return await self._opened(records)

    async def _read_assigned(self, reader: AIOKafkaConsumer, tp: KafkaTopicPartition, limit: int) -> list[Record]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HIGH_WATERMARK_TIMEOUT_SECONDS
        records: list[Record] = []
        while len(records) < limit:
            batch = await reader.getmany(tp, timeout_ms=100, max_records=limit - len(records))
            records += [_to_record(m) for m in batch.get(tp, [])]
            highwater = reader.highwater(tp)
            if highwater is not None and await reader.position(tp) >= highwater:
                break
            if loop.time() > deadline:
                if highwater is None:
                    raise TimeoutError(f"no high watermark for {tp}")
                break  # what came so far; the caller reads on from the last offset
        return records


class KafkaConsumer:
    """One member of a consumer group, on top of `AIOKafkaConsumer`."""

    def __init__(self, bus: KafkaBus, group: str, topics: list[str]) -> None:
        self.bus = bus
        self.group = group
        self.topics = list(topics)
        self._consumer: AIOKafkaConsumer | None = None
        # Seeks on partitions not assigned yet; applied when the group assigns them to us.
        self._pending_seeks: dict[KafkaTopicPartition, int] = {}

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await self.bus.ensure_topics(self.topics)  # subscribing to a missing topic gets nothing
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bus.bootstrap_servers,
            client_id=self.bus.client_id,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.bus.session_timeout_ms,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        )
        listener = _ApplyPendingSeeks(consumer, self._pending_seeks)
        consumer.subscribe(topics=self.topics, listener=listener)
        await consumer.start()
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        member_id = _unannounced_member(consumer)
        await consumer.stop()  # sends LeaveGroup, so the others rebalance at once
        if member_id is not None:
            await self.bus._leave_group(self.group, member_id)

    async def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        batches = await self._started().getmany(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
        return await self.bus._opened([_to_record(m) for messages in batches.values() for m in messages])

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._started()
        assigned = consumer.assignment()
        # A partition taken away by a rebalance cannot be committed; its new owner redelivers.
        to_commit = {
            tp: offset
            for (topic, partition), offset in offsets.items()
            if (tp := KafkaTopicPartition(topic, partition)) in assigned
        }
        if not to_commit:
            return
        try:
            await consumer.commit(to_commit)
        except CommitFailedError as e:
            log.warning("commit of %s lost to a rebalance, records will be redelivered: %s",
                        self.group, e)

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        consumer = self._started()
        tp = KafkaTopicPartition(topic, partition)
        if tp in consumer.assignment():
            consumer.seek(tp, offset)
        else:
            self._pending_seeks[tp] = offset

    def assignment(self) -> set[TopicPartition]:
        if self._consumer is None:
            return set()
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("KafkaConsumer.start() was not called")
        return self._consumer


def _unannounced_member(consumer: AIOKafkaConsumer) -> str | None:
    """The member id aiokafka will not send LeaveGroup for, if any.

    aiokafka only leaves a group at generation > 0, as Kafka numbers generations from 1; Tansu
    numbers them from 0, so a fresh group's first members would leave silently and the group would
    wait a whole session timeout for them before rebalancing.
    """
    coordinator = getattr(consumer, "_coordinator", None)  # private, hence the getattr
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return None
    member_id = getattr(coordinator, "member_id", "")
    return member_id or None


class _ApplyPendingSeeks(ConsumerRebalanceListener):
    """Applies the seeks asked for before the group assigned their partitions to this member."""

    def __init__(self, consumer: AIOKafkaConsumer, pending: dict[KafkaTopicPartition, int]) -> None:
        self.consumer = consumer
        self.pending = pending

    async def on_partitions_revoked(self, revoked: Iterable[KafkaTopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Iterable[KafkaTopicPartition]) -> None:
        for tp in set(assigned) & self.pending.keys():
            self.consumer.seek(tp, self.pending.pop(tp))


def _to_record(message: ConsumerRecord[bytes, bytes]) -> Record:
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key.decode() if message.key is not None else "",
        value=message.value if message.value is not None else b"",
        headers={k: v.decode() for k, v in message.headers},
        timestamp_ms=message.timestamp,
    )

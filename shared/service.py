"""Builds a service's FastAPI app: the same operational shell around each service's own routes.

Every service gets: the contract's error shape, `X-Request-ID`, CORS, `/health`, `/ready`,
`/metrics`, and a lifespan that migrates its store, starts the bus, the outbox relay and the
consumer loop, and stops them in reverse order.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.auth import resolve_credentials
from shared.bus import Bus, create_bus
from shared.clock import Clock
from shared.consumer import ConsumerLoop, Handlers, Transaction
from shared.customer_locks import CustomerLocks
from shared.errors import install_error_handlers
from shared.identity import resolve_erasure_key, use_erasure_key
from shared.observability import RequestContextMiddleware
from shared.outbox import OutboxRelay, write_outbox
from shared.periodic import run_once_per_interval
from shared.processed_ids import prune_processed_ids
from shared.settings import ServiceSettings
from shared.store import BusTables, Store, hold_lock, run_through_conflicts

log = logging.getLogger("funnelstream.service")

T = TypeVar("T")


@dataclass
class ServiceParts:
    """What a service contributes; everything else is the same for all four."""

    name: str
    settings: ServiceSettings
    tables: BusTables
    migrations: Path
    routers: list[APIRouter]
    handlers: Handlers = field(default_factory=dict)
    # Runs first in every consumed batch's transaction, before any handler (the service's locks).
    prepare_batch: Callable[[Transaction], Awaitable[None]] | None = None
    # Locked next, on PostgreSQL: the customers each batch's events name (replicas take turns on them).
    customer_locks: CustomerLocks | None = None
    description: str = ""
    # Long-running tasks started with the service (pipelines): (name, task(runtime)).
    workers: list[tuple[str, Callable[[Runtime], Coroutine[Any, Any, None]]]] = field(default_factory=list)
    # Jobs run every `seconds` (schedulers, pruning): (name, seconds, job(runtime)) or a `Periodic`;
    # once per interval across replicas unless `every_replica`.
    periodic: list[tuple[str, float, Callable[[Runtime], Awaitable[None]]] | Periodic] = field(default_factory=list)


class Periodic(NamedTuple):
    """A job run every `seconds`: by one replica per interval (a lease in the store, see
    shared/periodic.py), or by `every_replica` when replicas already share its work out
    among themselves (each claims its own rows)."""

    name: str
    seconds: float
    job: Callable[[Runtime], Awaitable[None]]
    every_replica: bool = False


@dataclass
class Runtime:
    """The live parts of a running service, on `app.state.runtime`."""

    store: Store
    tables: BusTables
    bus: Bus
    relay: OutboxRelay
    consumer: ConsumerLoop | None
    clock: Clock = field(default_factory=Clock)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Set at shutdown: workers and periodic jobs finish what they hold and return.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[Transaction]:
        """A write transaction outside the consumer (an API call, a scheduled job), the same unit
        of work a handler gets: `now` is the service clock once it has begun; deferred work runs
        and published events are written to the outbox before it commits, and relayed after."""
        async with self.store.transaction() as session:
            tx = Transaction(session, self.clock.now())
            yield tx
            await tx.run_deferred()
            await write_outbox(session, self.tables, tx.outbox)
        self.relay.wake()

    async def job(self, name: str, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """A job's one transaction (`changing`), its `now` the time to work at. Runs of one job take
        turns (the scheduled one and one on demand, or two replicas' at an interval's edge: both
        would see the same rows to move) and each reads the clock once its turn has come (a run
        that waited must not undo the later time of the one it waited for). One the database
        aborted as a deadlock victim (it met a consumed batch on the same rows) runs again."""
        async def once() -> T:
            async with self.changing() as tx:
                await hold_lock(tx.session, name)
                tx.now = self.clock.now()
                return await work(tx)
        return await run_through_conflicts(name, once)

    def start_tasks(self, parts: ServiceParts) -> None:
        """Start the relay, consumer, workers and periodic jobs (again, after a restart)."""
        self.stopping = asyncio.Event()
        self.relay.restart()
        self.tasks = [asyncio.create_task(self.relay.run(), name=f"{parts.name}-outbox")]
        if self.consumer is not None:
            self.consumer.restart()
            self.tasks.append(
                asyncio.create_task(_supervise(self.consumer, self.stopping), name=f"{parts.name}-consumer"))
        for name, worker in parts.workers:
            self.tasks.append(asyncio.create_task(worker(self), name=name))
        for entry in [*parts.periodic, *self.shell_jobs(parts.settings)]:
            periodic = Periodic(*entry)
            self.tasks.append(asyncio.create_task(_every(periodic, self, parts.name), name=periodic.name))

    def shell_jobs(self, settings: ServiceSettings) -> list[Periodic]:
        """The periodic jobs of every service with a consumer, beside its own."""
        days = settings.processed_ids_retention_days
        return [processed_ids_pruning(days)] if self.consumer is not None and days > 0 else []

    async def stop_tasks(self, grace: float = 10.0) -> None:
        """Let every task finish its transaction in hand; cancel only what is still busy after
        `grace` seconds (cancelling mid-transaction can leave a database connection unusable)."""
        self.stopping.set()
        self.relay.stop()
        if self.consumer is not None:
            self.consumer.stop()
        if self.tasks:
            _, busy = await asyncio.wait(self.tasks, timeout=grace)
            for task in busy:
                log.warning("task %s did not stop within %s s; cancelling it", task.get_name(), grace)
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)


PRUNE_PROCESSED_IDS_SECONDS = 3600.0  # a pass reads the whole table; an hour late is nothing to a window of days


def processed_ids_pruning(days: float) -> Periodic:
    """Forget the consumer's processed message ids older than `days` on the service clock
    (shared/processed_ids.py)."""
    async def prune(runtime: Runtime) -> None:
        before = runtime.clock.now() - timedelta(days=days)
        deleted = await prune_processed_ids(runtime.store, runtime.tables.processed, before, stopping=runtime.stopping)
        log.info("pruned %d processed message ids older than %s", deleted, before.isoformat())
    return Periodic("prune-processed-ids", PRUNE_PROCESSED_IDS_SECONDS, prune)


def create_service_app(parts: ServiceParts, bus: Bus | None = None) -> FastAPI:
    """`bus`: share one started bus between services in one process; else the app owns one."""
    settings = parts.settings
    owns_bus = bus is None
    the_bus = bus or create_bus(settings)
    store = Store(settings.store_url)
    relay = OutboxRelay(store, parts.tables, the_bus)
    consumer = (
        ConsumerLoop(parts.name, the_bus, store, parts.tables, parts.handlers, relay, settings.bus_max_attempts,
                     now=lambda: runtime.clock.now(), prepare=parts.prepare_batch, customer_locks=parts.customer_locks,
                     max_batch=settings.bus_max_batch)
        if parts.handlers
        else None
    )
    runtime = Runtime(store, parts.tables, the_bus, relay, consumer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.migrate(parts.migrations)
        if owns_bus:
            await the_bus.start()
        runtime.start_tasks(parts)
        log.info("%s started (store %s, bus %s)", parts.name, _redact(store.url), settings.bus_backend)
        try:
            yield
        finally:
            await runtime.stop_tasks()
            if owns_bus:
                await the_bus.stop()
            await store.dispose()

    app = FastAPI(
        title=f"Funnelstream {parts.name}",
        description=parts.description,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.credentials = resolve_credentials(settings)
    use_erasure_key(resolve_erasure_key(settings))
    install_operational_shell(app, parts.name, settings.cors_origins)
    app.include_router(operations_router(parts.name))
    for router in parts.routers:
        app.include_router(router)
    return app


def install_operational_shell(app: FastAPI, service: str, cors_origins: str) -> None:
    """Error shape, request ids and CORS: shared by the services and the gateway."""
    install_error_handlers(app)
    origins = [o.strip() for o in cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, service=service)


async def _supervise(consumer: ConsumerLoop, stopping: asyncio.Event) -> None:
    """Keep the consumer running through bus outages; a crash restarts it from committed offsets."""
    while not stopping.is_set():
        try:
            await consumer.run()
        except Exception:
            log.exception("%s consumer stopped; restarting in 2 s", consumer.service)
            await _sleep_unless(stopping, 2)


async def _every(periodic: Periodic, runtime: Runtime, service: str) -> None:
    name, seconds, job, every_replica = periodic
    while not await _sleep_unless(runtime.stopping, seconds):
        try:
            if every_replica:
                await job(runtime)
            else:
                await run_once_per_interval(runtime.store, runtime.tables.periodic, service, name, seconds,
                                            lambda: job(runtime))
        except Exception:
            log.exception("periodic job %s failed; next try in %s s", name, seconds)


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less if stopping; True when stopping."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        pass
    return stopping.is_set()


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def operations_router(service: str) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "service": service}

    @router.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        """Readiness: the store and the bus answer, and the consumer is running."""
        checks = await readiness_checks(request.app.state.runtime)
        ok = all(c["ok"] for c in checks.values())
        body = {"status": "ready" if ok else "not_ready", "service": service, "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    return router


async def readiness_checks(runtime: Runtime) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {
        "store": await _check(runtime.store.ping()),
        "bus": await _check(runtime.bus.ping()),
    }
    if runtime.consumer is not None:
        running = runtime.consumer.healthy
        checks["consumer"] = {"ok": running, **({} if running else {"error": "consumer not running"})}
    return checks


async def _check(probe: Any) -> dict[str, Any]:
    try:
        await asyncio.wait_for(probe, timeout=5)
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest

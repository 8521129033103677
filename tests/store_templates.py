"""Each service's store migrated once per test session, then copied for every test that needs a
fresh one: a SQLite file is copied, a PostgreSQL database is cloned (CREATE DATABASE ... TEMPLATE,
which copies files) instead of running every Alembic migration again. Each test still gets a store
of its own, fully migrated; tests/store runs the real migrations on empty stores.

Template databases are named after the service, a hash of its migrations, this process and a
random suffix (two test runs on one machine never share one), nobody but the builder ever
connects to them (PostgreSQL refuses to clone a database someone is connected to), and they are
dropped when the session ends. PostgreSQL's slow parts run on a thread beside the tests: the
database a test is done with is dropped (about a second on a busy machine, mostly waiting) and
the next test's clone is made while the current test runs.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from shared.store import Store

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("ingest", "segmentation", "funnel", "followup", "recommendation")
# What a service's migrations run: its own folder and the shared helpers they call.
SHARED_MIGRATION_CODE = (ROOT / "shared" / "migrations_env.py", ROOT / "shared" / "store.py")

Admin = Callable[[str], Awaitable[None]]  # runs one statement on the PostgreSQL server


def migrations_of(service: str) -> Path:
    return ROOT / "services" / service / "migrations"


def migrations_hash(service: str) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in migrations_of(service).rglob("*.py") if "__pycache__" not in p.parts)
    for path in [*files, *SHARED_MIGRATION_CODE]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


async def migrated(url: str, service: str) -> None:
    store = Store(url)
    try:
        await store.migrate(migrations_of(service))
    finally:
        await store.dispose()  # closes every connection: a template must have none


def name_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


class Background:
    """Statements run one after another on a thread of their own. `close` waits for all of them
    and raises if a drop failed (a database left behind)."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-databases")
        self.failures: list[str] = []

    def run(self, statement: str) -> Future[None]:
        return self.worker.submit(lambda: asyncio.run(self.admin(statement)))

    def drop(self, url: str) -> None:
        name = name_of(url)

        def record_failure(done: Future[None]) -> None:
            if done.exception() is not None:
                self.failures.append(f"{name}: {done.exception()!r}")

        self.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)').add_done_callback(record_failure)

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        if self.failures:
            raise RuntimeError("test databases left behind: " + "; ".join(self.failures))


class StoreTemplates:
    """Per service, a migrated SQLite file and a migrated PostgreSQL template database, each built
    on first use. `create_pg` makes an empty PostgreSQL database of a name and returns its URL."""

    def __init__(self, directory: Path, create_pg: Callable[[str], Awaitable[str]], admin: Admin) -> None:
        self.directory = directory
        self.create_pg = create_pg
        self.admin = admin
        self.background = Background(admin)
        self.suffix = f"{os.getpid()}_{uuid.uuid4().hex[:4]}"
        self.sqlite_files: dict[str, Path] = {}
        self.pg_templates: dict[str, str] = {}
        self.spares: dict[str, tuple[str, Future[None]]] = {}  # per service, its next clone

    async def copy_sqlite(self, service: str, target: Path) -> None:
        """A migrated SQLite store of `service` at `target`."""
        if service not in self.sqlite_files:
            path = self.directory / f"{service}-{migrations_hash(service)}.db"
            await migrated(f"sqlite+aiosqlite:///{path}", service)
            self.sqlite_files[service] = path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.sqlite_files[service], target)

    async def clone_pg(self, service: str) -> str:
        """A new PostgreSQL database holding a migrated, empty store of `service`; its URL (drop
        it with `drop`)."""
        if service not in self.pg_templates:
            url = await self.create_pg(f"fs_tmpl_{service}_{migrations_hash(service)}_{self.suffix}")
            try:
                await migrated(url, service)
            except BaseException:
                self.drop(url)
                raise
            self.pg_templates[service] = url
        url, made = self.spares.pop(service, None) or self._clone(service)
        self.spares[service] = self._clone(service)
        await asyncio.wrap_future(made)
        return url

    def drop(self, url: str) -> None:
        """Drop a database on the background thread (the next tests need not wait)."""
        self.background.drop(url)

    def close(self) -> None:
        """At the session's end: drop the spare clones and the templates, wait for every drop."""
        for url, _ in self.spares.values():
            self.drop(url)
        for url in self.pg_templates.values():
            self.drop(url)
        self.background.close()

    def _clone(self, service: str) -> tuple[str, Future[None]]:
        base, template = self.pg_templates[service].rsplit("/", 1)
        name = f"fs_test_{uuid.uuid4().hex[:12]}"
        return f"{base}/{name}", self.background.run(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

"""A request the database aborted as a conflict is answered so a client knows to send it again."""
from __future__ import annotations

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError

from shared.errors import install_error_handlers
from tests.helpers import assert_error


def app_failing_with(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/write")
    async def write() -> None:
        raise exc

    return app


async def post(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post("/write")


def wrapped(error: Exception) -> DBAPIError:
    """As SQLAlchemy raises it: the driver's error as `orig`."""
    return DBAPIError("UPDATE ...", {}, error)


async def test_deadlock_victim_is_503_with_retry_after():
    response = await post(app_failing_with(wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))))
    assert_error(response, 503, "conflict_retry")
    assert response.headers["Retry-After"] == "1"


async def test_serialization_failure_is_503_with_retry_after():
    response = await post(app_failing_with(wrapped(asyncpg.exceptions.SerializationError("could not serialize"))))
    assert_error(response, 503, "conflict_retry")


async def test_other_database_errors_stay_internal_errors():
    response = await post(app_failing_with(wrapped(asyncpg.exceptions.UndefinedTableError("no table"))))
    assert_error(response, 500, "internal_error")


async def test_database_errors_name_no_values(tmp_path):
    """What a failed statement says (logs, dead letter headers) holds no customer data."""
    from sqlalchemy import text

    from shared.store import Store

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE people (email TEXT PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO people VALUES (:e)"), {"e": "ann@example.com"})
        try:
            async with store.engine.begin() as conn:
                await conn.execute(text("INSERT INTO people VALUES (:e)"), {"e": "ann@example.com"})
        except Exception as exc:  # the unique key: an IntegrityError naming the statement
            assert "INSERT INTO people" in str(exc)
            assert "ann@example.com" not in str(exc)
        else:
            raise AssertionError("the duplicate insert should have failed")
    finally:
        await store.dispose()

"""Settings every process reads. Each service adds its own class with its own env prefix.

Common fields keep their bare environment names (`BUS_BACKEND`, not `FUNNEL_BUS_BACKEND`) because
operators set them once for the whole deployment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def common(default: Any, env: str, description: str) -> Any:
    """A field read from the bare environment variable `env`, whatever the class's prefix."""
    return Field(default, validation_alias=AliasChoices(env, env.lower()), description=description)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    data_dir: Path = common(Path("data"), "DATA_DIR", "Where SQLite stores and the embedded bus live.")
    host: str = common("127.0.0.1", "HOST", "Address the HTTP server binds to.")
    port: int = common(8080, "PORT", "Port the HTTP server listens on.")
    bus_backend: Literal["embedded", "kafka"] = common(
        "embedded", "BUS_BACKEND", "`embedded` (durable local log under DATA_DIR) or `kafka`."
    )
    bus_path: Path | None = common(
        None, "BUS_PATH", "File of the embedded bus log (default DATA_DIR/bus.db)."
    )
    bus_partitions: int = common(
        8, "BUS_PARTITIONS", "Partitions per topic when the bus creates a topic."
    )
    bus_max_attempts: int = common(
        5, "BUS_MAX_ATTEMPTS", "Attempts at one message before it goes to `<topic>.dlq`."
    )
    kafka_bootstrap_servers: str = common(
        "127.0.0.1:9092", "KAFKA_BOOTSTRAP_SERVERS", "Kafka brokers, comma-separated."
    )
    kafka_idempotent_producer: bool = common(
        True, "KAFKA_IDEMPOTENT_PRODUCER", "Idempotent Kafka producer (turn off for Tansu)."
    )
    kafka_replication_factor: int = common(
        1, "KAFKA_REPLICATION_FACTOR", "Replication factor of topics the bus creates."
    )
    api_keys: str = common(
        "", "API_KEYS", "`key:role` pairs, comma-separated; role `admin` or `reader`."
    )
    write_keys: str = common("", "WRITE_KEYS", "Ingest write keys, comma-separated.")
    cors_origins: str = common("", "CORS_ORIGINS", "Allowed browser origins, comma-separated; `*` for any.")
    log_level: str = common("INFO", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["json", "text"] = common(
        "json", "LOG_FORMAT", "`json` (one object per line) or `text`."
    )

    @property
    def embedded_bus_path(self) -> Path:
        return self.bus_path or self.data_dir / "bus.db"

    def sqlite_url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.data_dir / f'{name}.db'}"


class ServiceSettings(CommonSettings):
    """Base of each data service's settings: a store of its own."""

    database_url: str | None = Field(
        None, description="SQLAlchemy async URL of this service's store (default SQLite in DATA_DIR)."
    )

    @property
    def store_url(self) -> str:
        return self.database_url or self.sqlite_url(self.service_name)

    @property
    def service_name(self) -> str:
        raise NotImplementedError

"""Settings every process reads. Each service adds its own class with its own env prefix.

Common fields keep their bare environment names (`BUS_BACKEND`, not `FUNNEL_BUS_BACKEND`) because
operators set them once for the whole deployment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)
# Bounds of time settings: a value no date arithmetic overflows on (now - 10**6 days does) and no
# timer waits for ever on; NaN and infinity are outside every range.
CENTURY_DAYS = 36_500
YEAR_HOURS = 8_760
WEEK_SECONDS = 7 * 86_400
DAY_SECONDS = 86_400
HOUR_SECONDS = 3_600


class SettingsError(ValueError):
    """Settings a process cannot run with: one problem per bad variable, each naming it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_settings(cls: type[S], **values: Any) -> S:
    """`cls` read from the environment (over `values`), or a SettingsError saying which variable is
    wrong and why."""
    try:
        return cls(**values)
    except ValidationError as err:
        raise SettingsError([_problem(cls, e) for e in err.errors()]) from None


def _problem(cls: type[BaseSettings], error: Any) -> str:
    if not error["loc"]:  # a check across fields, whose message names the variables itself
        return str(error["msg"]).removeprefix("Value error, ")
    shown = str(error["input"])
    shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
    return f"{env_variable(cls, str(error['loc'][0]))}={shown} is refused: {error['msg']}."


def env_variable(cls: type[BaseSettings], key: str) -> str:
    """The environment variable of field `key` of `cls` (or of the alias `key` of a common field)."""
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and key in (name, *map(str, alias.choices)):
            return str(alias.choices[0])
        if key == name:
            return f"{cls.model_config.get('env_prefix', '')}{name}".upper()
    return key


def common(default: Any, env: str, description: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None) -> Any:
    """A field read from the bare environment variable `env`, whatever the class's prefix."""
    return Field(default, validation_alias=AliasChoices(env, env.lower()), description=description, ge=ge, gt=gt, le=le)


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
    bus_max_batch: int = common(
        2000, "BUS_MAX_BATCH", "Most records a consumer applies in one store transaction (larger batches share "
        "each transaction's fixed work among more events; a smaller one holds each write lock for less time).",
        ge=1, le=20000
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
    bus_retention_days: float = common(
        0, "BUS_RETENTION_DAYS", "Embedded bus: delete records older than this once every consumer group has read "
        "them (dead letters by age alone); Kafka: `retention.ms` of topics the bus creates. `0` keeps everything "
        "(replay from offset 0 needs the whole history).", ge=0, le=CENTURY_DAYS
    )
    processed_ids_retention_days: float = common(
        0, "PROCESSED_IDS_RETENTION_DAYS", "Days each consumer remembers the ids of the messages it processed "
        "(`processed_messages`: a row per service per event), pruned hourly. Redelivery and the outbox relay repeat "
        "only messages processed just before a crash, once the process is back: a window longer than any outage "
        "covers them. An id sent again later (the same file imported again, a Kafka group whose offsets expired "
        "reading from the start) counts again once past it. `0` keeps every id.", ge=0, le=CENTURY_DAYS
    )
    erasure_key: str = common(
        "", "ERASURE_KEY", "Secret of the keyed hash (HMAC-SHA256) erasure tombstones keep instead of ids; the "
        "same in every process. Required off loopback."
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
    http_header_timeout_seconds: float = common(
        10.0, "HTTP_HEADER_TIMEOUT_SECONDS", "A connection whose request line and headers are not complete "
        "this long after it opened (or after its first byte, on a kept-alive connection) is closed (408).",
        gt=0, le=HOUR_SECONDS
    )
    http_body_timeout_seconds: float = common(
        30.0, "HTTP_BODY_TIMEOUT_SECONDS", "A request body not complete this long after its headers is "
        "answered 408 and the connection closed.", gt=0, le=HOUR_SECONDS
    )
    http_keepalive_seconds: float = common(
        5.0, "HTTP_KEEPALIVE_SECONDS", "An idle kept-alive connection is closed after this long.", gt=0, le=HOUR_SECONDS
    )
    http_max_connections: int = common(
        1000, "HTTP_MAX_CONNECTIONS", "Open connections the HTTP server serves at once; requests on "
        "connections over it are answered 503 and closed. Keep it under `ulimit -n`."
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

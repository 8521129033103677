"""docker-compose.yml stays true to the settings classes: every variable it sets is a setting, and
every setting reaches its containers (a setting added without wiring it into compose fails here)."""
from __future__ import annotations

import re

import yaml

from services.settings_table import env_vars, settings_classes
from tests.helpers import ROOT

# Variables that are not settings: which process the image runs, and the database's own.
NOT_SETTINGS = {"SERVICE", "POSTGRES_PASSWORD"}
# Settings of the embedded mode only: in containers the stores are PostgreSQL and the bus Kafka.
# GATEWAY_PROCESSES starts the services whose URL is unset: in compose every URL is set.
EMBEDDED_ONLY = {"DATA_DIR", "BUS_PATH", "GATEWAY_PROCESSES"}


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def known_variables(service: str) -> set[str]:
    classes = dict(settings_classes())
    own = {v for v, _, _ in env_vars(classes[service])}
    return own | {v for v, _, _ in env_vars(classes["every process"])}


def test_every_variable_compose_sets_is_a_setting_of_that_service():
    services = compose()["services"]
    for name in ("gateway", "ingest", "segmentation", "funnel", "followup", "recommendation"):
        environment = set(services[name]["environment"])
        unknown = environment - known_variables(name) - NOT_SETTINGS
        assert not unknown, f"{name} sets variables no settings class reads: {sorted(unknown)}"


def test_each_service_container_runs_its_own_service_with_its_own_database():
    services = compose()["services"]
    for name in ("ingest", "segmentation", "funnel", "followup", "recommendation"):
        environment = services[name]["environment"]
        assert environment["SERVICE"] == name
        assert environment[f"{name.upper()}_DATABASE_URL"].endswith(f"/{name}")
    gateway = services["gateway"]["environment"]
    assert {gateway[f"GATEWAY_{n.upper()}_URL"] for n in ("ingest", "segmentation", "funnel", "followup", "recommendation")} == {
        f"http://{n}:8080" for n in ("ingest", "segmentation", "funnel", "followup", "recommendation")}


def test_every_setting_of_a_service_is_wired_into_its_containers():
    services = compose()["services"]
    for name in ("gateway", "ingest", "segmentation", "funnel", "followup", "recommendation"):
        missing = known_variables(name) - set(services[name]["environment"]) - EMBEDDED_ONLY
        assert not missing, f"{name}: settings docker-compose.yml does not pass to the container: {sorted(missing)}"


# The wiring between containers: fixed on purpose (the addresses, ports and backends the other
# containers are built around), so an `.env` made for `make run` does not rewire them.
WIRING = {"HOST", "PORT", "BUS_BACKEND", "KAFKA_BOOTSTRAP_SERVERS"}
SUBSTITUTION = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+)(?P<op>:?[-?])(?P<default>.*)\}$")


def resolved(value: object) -> str | None:
    """What compose puts in the container with nothing set in the environment (None: required)."""
    text = str(value)
    match = SUBSTITUTION.match(text)
    if not match:
        return text
    return match["default"] if "-" in match["op"] else None


def is_wiring(variable: str) -> bool:
    return variable in WIRING or variable.endswith("_DATABASE_URL") or (
        variable.startswith("GATEWAY_") and variable.endswith("_URL"))


def test_every_setting_is_read_from_the_environment_or_env_file():
    services = compose()["services"]
    for name in ("gateway", "ingest", "segmentation", "funnel", "followup", "recommendation"):
        for variable, value in services[name]["environment"].items():
            if variable in NOT_SETTINGS or is_wiring(variable):
                continue
            match = SUBSTITUTION.match(str(value))
            assert match and match["name"] == variable, (
                f"{name}: {variable}={value!r} ignores the environment and .env; write "
                f"{variable}: ${{{variable}:-{value}}}")


def test_kafka_writes_its_log_to_its_volume():
    kafka = compose()["services"]["kafka"]
    log_dirs = resolved(kafka["environment"].get("KAFKA_LOG_DIRS", ""))
    assert log_dirs, "KAFKA_LOG_DIRS unset: the image writes to /tmp, lost on `make down`"
    mounts = [v.split(":")[1] for v in kafka["volumes"]]
    for directory in log_dirs.split(","):
        assert any(directory == m or directory.startswith(m.rstrip("/") + "/") for m in mounts), (
            f"Kafka's log dir {directory} is not on a volume ({mounts})")


def test_kafka_keeps_the_whole_history_for_replay():
    environment = compose()["services"]["kafka"]["environment"]
    assert resolved(environment.get("KAFKA_LOG_RETENTION_MS")) == "-1", (
        "topics would keep Kafka's default 7 days, and `funnelstream replay` reads from offset 0")


def test_postgres_counts_as_healthy_only_once_it_listens_on_tcp():
    check = " ".join(compose()["services"]["postgres"]["healthcheck"]["test"])
    host = re.search(r"pg_isready\b.*?(?:-h|--host[= ])\s*(\S+)", check)
    # Without a TCP host pg_isready uses the socket, which answers during first-start initialisation
    # while TCP is still closed (and the server restarts after it).
    assert host and not host[1].startswith("/"), f"the healthcheck does not connect over TCP: {check}"

"""docker-compose.yml stays true to the settings classes: every variable it sets is a setting, and
every setting reaches its containers (a setting added without wiring it into compose fails here)."""
from __future__ import annotations

import yaml

from shared.settings_table import env_vars, settings_classes
from tests.helpers import ROOT

# Variables that are not settings: which process the image runs, and the database's own.
NOT_SETTINGS = {"SERVICE", "POSTGRES_PASSWORD"}
# Settings of the embedded mode only: in containers the stores are PostgreSQL and the bus Kafka.
EMBEDDED_ONLY = {"DATA_DIR", "BUS_PATH"}


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def known_variables(service: str) -> set[str]:
    classes = dict(settings_classes())
    own = {v for v, _, _ in env_vars(classes[service])}
    return own | {v for v, _, _ in env_vars(classes["every process"])}


def test_every_variable_compose_sets_is_a_setting_of_that_service():
    services = compose()["services"]
    for name in ("gateway", "ingest", "segmentation", "funnel", "followup"):
        environment = set(services[name]["environment"])
        unknown = environment - known_variables(name) - NOT_SETTINGS
        assert not unknown, f"{name} sets variables no settings class reads: {sorted(unknown)}"


def test_each_service_container_runs_its_own_service_with_its_own_database():
    services = compose()["services"]
    for name in ("ingest", "segmentation", "funnel", "followup"):
        environment = services[name]["environment"]
        assert environment["SERVICE"] == name
        assert environment[f"{name.upper()}_DATABASE_URL"].endswith(f"/{name}")
    gateway = services["gateway"]["environment"]
    assert {gateway[f"GATEWAY_{n.upper()}_URL"] for n in ("ingest", "segmentation", "funnel", "followup")} == {
        f"http://{n}:8080" for n in ("ingest", "segmentation", "funnel", "followup")}


def test_every_setting_of_a_service_is_wired_into_its_containers():
    services = compose()["services"]
    for name in ("gateway", "ingest", "segmentation", "funnel", "followup"):
        missing = known_variables(name) - set(services[name]["environment"]) - EMBEDDED_ONLY
        assert not missing, f"{name}: settings docker-compose.yml does not pass to the container: {sorted(missing)}"

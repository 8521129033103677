"""The README's settings table, from the settings classes of every service.

`python -m services.settings_table` prints it; `--update README.md` rewrites it in place. It
lives beside the services, not in shared/, because it imports all of them (shared/ imports no
service).

A test checks the README lists every variable, so the table cannot drift from the code.
"""
from __future__ import annotations

from collections.abc import Iterator

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from shared.settings import CommonSettings, env_variable


def env_vars(cls: type[BaseSettings], own_only: bool = True) -> Iterator[tuple[str, object, str]]:
    """(variable, default, description) for each field; common fields only on CommonSettings."""
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if own_only and cls is not CommonSettings and isinstance(alias, AliasChoices):
            continue  # a common field, listed once under CommonSettings
        variable = env_variable(cls, name)
        default = field.default if field.default is not None else ""
        yield variable, default, field.description or ""


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    from services.followup.settings import FollowupSettings
    from services.funnel.settings import FunnelSettings
    from services.gateway.settings import GatewaySettings
    from services.ingest.settings import IngestSettings
    from services.recommendation.settings import RecommendationSettings
    from services.segmentation.settings import SegmentationSettings

    return [
        ("every process", CommonSettings),
        ("gateway", GatewaySettings),
        ("ingest", IngestSettings),
        ("segmentation", SegmentationSettings),
        ("funnel", FunnelSettings),
        ("followup", FollowupSettings),
        ("recommendation", RecommendationSettings),
    ]


def markdown() -> str:
    lines = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for owner, cls in settings_classes():
        for variable, default, description in env_vars(cls):
            shown = f"`{default}`" if default != "" else ""
            lines.append(f"| `{variable}` | {owner} | {shown} | {description} |")
    return "\n".join(lines)


START, END = "<!-- settings-table -->", "<!-- /settings-table -->"


def update(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{before}{START}\n{markdown()}\n{END}{after}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"]:
        update(sys.argv[2])
    else:
        print(markdown())

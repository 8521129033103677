"""Time settings are bounded: an operator's value that would overflow date arithmetic (now minus
10**6 days is before year 1) or never fire a timer stops the process at start, with one line
naming the variable, instead of dead-lettering every event later."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import annotated_types
import pytest
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from shared.settings import CommonSettings, SettingsError, env_variable, load_settings
from services.settings_table import settings_classes
from tests.helpers import ROOT

TIME_UNITS = ("_days", "_hours", "_seconds")


def time_fields() -> list[tuple[type[BaseSettings], str, FieldInfo]]:
    """Each class's own time fields (the common ones once, on CommonSettings)."""
    return [(cls, name, field) for _, cls in settings_classes() for name, field in cls.model_fields.items()
            if name.endswith(TIME_UNITS) and (cls is CommonSettings or not isinstance(field.validation_alias, AliasChoices))]


def bounds(field: FieldInfo) -> tuple[float | None, float | None, float | None]:
    """(ge, gt, le) of the field."""
    found: dict[str, float] = {}
    for constraint in field.metadata:
        for kind in ("ge", "gt", "le"):
            if isinstance(constraint, getattr(annotated_types, kind.capitalize())):
                found[kind] = getattr(constraint, kind)
    return found.get("ge"), found.get("gt"), found.get("le")


def out_of_range(field: FieldInfo) -> list[str]:
    ge, gt, le = bounds(field)
    assert le is not None
    below = [str(ge - 1)] if ge is not None else [str(gt)] if gt is not None else []
    return [*below, str(le + 1), str(le * 1000), "1e300", "inf", "nan"]


CASES = [pytest.param(cls, name, value, id=f"{env_variable(cls, name)}={value}")
         for cls, name, field in time_fields() for value in out_of_range(field)]
ALL_BOUNDED = [pytest.param(cls, name, id=env_variable(cls, name)) for cls, name, _ in time_fields()]


class TestEveryTimeSettingIsBounded:
    @pytest.mark.parametrize(("cls", "name"), ALL_BOUNDED)
    def test_it_has_a_lower_and_an_upper_bound(self, cls: type[BaseSettings], name: str) -> None:
        ge, gt, le = bounds(cls.model_fields[name])
        assert (ge is not None or gt is not None) and le is not None, f"bound {env_variable(cls, name)} with ge=/gt= and le="

    @pytest.mark.parametrize(("cls", "name", "value"), CASES)
    def test_a_value_out_of_range_is_refused_naming_the_variable(self, cls: type[BaseSettings], name: str, value: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        variable = env_variable(cls, name)
        monkeypatch.setenv(variable, value)
        with pytest.raises(SettingsError) as refused:
            load_settings(cls)
        assert refused.value.problems == [refused.value.problems[0]]
        assert refused.value.problems[0].startswith(f"{variable}={value} is refused: ")

    @pytest.mark.parametrize(("cls", "name"), ALL_BOUNDED)
    def test_the_bounds_themselves_are_accepted(self, cls: type[BaseSettings], name: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        ge, gt, le = bounds(cls.model_fields[name])
        for value in (le, ge, (gt or 0) + 0.5):
            if value is not None:
                monkeypatch.setenv(env_variable(cls, name), str(value))
                assert math.isclose(getattr(load_settings(cls), name), value)

    def test_the_retentions_go_up_to_a_century_and_0_keeps_everything(self) -> None:
        for cls, name, field in time_fields():
            if name.endswith("retention_days"):
                assert bounds(field) == (0, None, 36_500), env_variable(cls, name)
                assert field.default == 0


def start(module: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m <module>` with these variables; it must stop by itself, long before the timeout."""
    environment = {**os.environ, "DATA_DIR": str(tmp_path), "HOST": "127.0.0.1", "PORT": "0", **env}
    return subprocess.run([sys.executable, "-m", module], check=False, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=120)


class TestAProcessWithABadSettingDoesNotStart:
    @pytest.mark.parametrize(("module", "variable", "value"), [
        ("services.funnel", "FUNNEL_EVENTS_RETENTION_DAYS", "1000000"),
        ("services.segmentation", "SEGMENTATION_EVENTS_RETENTION_DAYS", "1000000"),
        ("services.followup", "HTTP_KEEPALIVE_SECONDS", "soon"),
        ("services.gateway", "FUNNEL_EVENTS_RETENTION_DAYS", "1000000"),  # make run: the funnel in-process
    ])
    def test_it_exits_non_zero_with_one_line_naming_the_variable(self, tmp_path: Path, module: str, variable: str,
                                                                  value: str) -> None:
        done = start(module, tmp_path, **{variable: value})
        assert done.returncode != 0
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
        assert done.stderr.startswith(f"error: {variable}={value} is refused: "), done.stderr

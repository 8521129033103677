"""The docs stay true to the code: every setting is in the README table."""
from __future__ import annotations

from services.settings_table import env_vars, settings_classes
from tests.helpers import ROOT


def test_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [v for _, cls in settings_classes() for v, _, _ in env_vars(cls) if f"`{v}`" not in readme]
    assert not missing, f"add these to the README settings table (python -m services.settings_table): {missing}"


def test_readme_opens_with_the_two_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    assert "make run" in first_screen and "make test" in first_screen

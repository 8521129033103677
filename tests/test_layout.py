"""The layout STYLE.md asks for: shared/ imports no service, and no service imports another's
modules (the gateway, which composes every service in one process, aside)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

SERVICES = ("ingest", "segmentation", "funnel", "followup", "recommendation")


def imported_modules(folder: Path) -> list[tuple[str, str]]:
    """(file, module) for every import in the Python files below `folder`, lazy ones included."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(ROOT)), node.module))
    return found


def test_shared_imports_no_service():
    wrong = [(f, m) for f, m in imported_modules(ROOT / "shared") if m == "services" or m.startswith("services.")]
    assert not wrong, f"shared/ must not import services (move the code beside the services): {wrong}"


def test_no_service_imports_another_service():
    wrong = [(f, m) for service in SERVICES for f, m in imported_modules(ROOT / "services" / service)
             if m.startswith("services.") and not m.startswith(f"services.{service}.") and m != f"services.{service}"]
    assert not wrong, f"a service imports another service's modules (share it through shared/): {wrong}"

"""Package boundaries: verifier stands alone; the ledger core has no HTTP server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((str(path.relative_to(ROOT)), a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module))
                found.update(
                    (str(path.relative_to(ROOT)), f"{node.module}.{a.name}") for a in node.names
                )
    return found


def test_the_packages_exist() -> None:
    for package in ("ledger", "api", "verifier"):
        assert (ROOT / package / "__init__.py").is_file()


@pytest.mark.parametrize("forbidden", ["ledger", "api"])
def test_verifier_imports_nothing_from_ledger_or_api(forbidden: str) -> None:
    bad = sorted(
        (path, name)
        for path, name in _imports("verifier")
        if name == forbidden or name.startswith(forbidden + ".")
    )
    assert bad == []


def test_verifier_needs_only_its_declared_dependencies() -> None:
    allowed = {"cryptography", "msgspec", "rich", "verifier", "__future__"}
    import sys

    stdlib = sys.stdlib_module_names
    bad = sorted(
        (path, name)
        for path, name in _imports("verifier")
        if name.split(".")[0] not in allowed | stdlib
    )
    assert bad == []


def test_ledger_imports_no_aiohttp_server_or_api() -> None:
    bad = sorted(
        (path, name)
        for path, name in _imports("ledger")
        if name in {"aiohttp.web", "api"}
        or name.startswith(("aiohttp.web", "api."))
        or name in {"aiohttp.web_app", "aiohttp.web_runner"}
    )
    assert bad == []

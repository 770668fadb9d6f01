"""The Sans-I/O modules must stay pure: no async library, no clock, no sockets.

DESIGN.md rule 1. The check runs in a fresh interpreter because this test process
has long since imported trio (pytest plugins), and it bypasses the package
``__init__`` files, which legitimately import the I/O layers.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import moonpool

PURE_MODULES = [
    "moonpool.transport._errors",
    "moonpool.transport._envelope",
    "moonpool.transport._checked_envelope",
    "moonpool.transport._framing",
    "moonpool.transport._protocol",
    "moonpool.transport._circuit",
    "moonpool.transport._load_balance",
]
ASYNC_LIBRARIES = ("trio", "anyio", "asyncio", "sniffio")
# Anything that reads a clock, sleeps, or does I/O.
FORBIDDEN_IMPORTS = {*ASYNC_LIBRARIES, "time", "datetime", "socket", "select", "selectors",
                     "ssl", "threading", "os", "io", "subprocess"}  # fmt: skip

PACKAGE_DIR = Path(moonpool.__file__).parent

PROBE = """
import json, sys, types
root = sys.argv[1]
for name, path in [("moonpool", root), ("moonpool.transport", root + "/transport")]:
    stub = types.ModuleType(name)
    stub.__path__ = [path]
    sys.modules[name] = stub
before = set(sys.modules)
import importlib
for module in sys.argv[2:]:
    importlib.import_module(module)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_pure_modules_do_not_load_async_libraries() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(PACKAGE_DIR), *PURE_MODULES],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert set(PURE_MODULES) <= set(loaded)  # the probe really imported them
    offenders = [m for m in loaded if m.split(".")[0] in ASYNC_LIBRARIES]
    assert offenders == [], f"pure transport modules pulled in {offenders}"


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_source_imports_no_clock_or_io(module: str) -> None:
    path = PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")
    forbidden = _imported_roots(path) & FORBIDDEN_IMPORTS
    assert not forbidden, f"{module} imports {sorted(forbidden)}; time must be a `now` argument"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_only_pure_moonpool_modules(module: str) -> None:
    path = PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moonpool"):
            assert node.module in PURE_MODULES, f"{module} imports impure {node.module}"

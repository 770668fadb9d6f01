"""Loads examples/ping_pong.py once for the transport tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PATH = Path(__file__).resolve().parents[2] / "examples" / "ping_pong.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ping_pong_example", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


example = load()

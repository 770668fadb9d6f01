"""Finding a simulation by name: ``path/to/file.py[:attr]`` or ``package.module:attr``.

The CLI runs a simulation named this way, and worker processes (a local pool,
or Dask workers on other machines) re-create the parent's simulation from the
same name: a builder is code -- processes, workloads, their closures -- and
code does not travel between processes; the name of the function that builds
it does.  ``attr`` is a ``SimulationBuilder`` or a function returning one
(called with no arguments); it defaults to ``simulation``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from moonpool._ground._run import stable_hash

if TYPE_CHECKING:
    from moonpool.sim._builder import SimulationBuilder

__all__ = ["TargetError", "absolute_target", "load_target"]

DEFAULT_ATTRIBUTE = "simulation"


class TargetError(ValueError):
    """A simulation target that cannot be found, imported, or is not a simulation."""


def _split(target: str) -> tuple[str, str]:
    if not isinstance(target, str) or not target:
        raise TargetError(f"a target is 'path/to/file.py[:attr]' or 'module:attr', got {target!r}")
    where, _, attr = target.partition(":")
    return where, attr or DEFAULT_ATTRIBUTE


def _is_path(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where


def absolute_target(target: str) -> str:
    """``target`` with a file path made absolute, so that another process finds it too."""
    where, attr = _split(target)
    if _is_path(where):
        where = os.path.abspath(where)
    return f"{where}:{attr}"


def load_target(target: str) -> SimulationBuilder:
    """Import ``target`` and return the ``SimulationBuilder`` it names (see the module doc)."""
    from moonpool.sim._builder import SimulationBuilder

    where, attr = _split(target)
    if not _is_path(where) and Path(where).is_file():
        raise TargetError(
            f"{where} is not a Python file: a target is 'path/to/file.py[:attr]' or "
            f"'package.module[:attr]'"
        )
    if _is_path(where):
        path = Path(where)
        if not path.is_file():
            raise TargetError(f"no such file: {where}")
        # One module per file, whatever imported it first: a worker loading the same
        # target for every batch imports it once.
        module_name = f"_moonpool_target_{path.stem}_{stable_hash(str(path.resolve())):x}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise TargetError(f"cannot import {where} as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses look their module up
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise TargetError(
                f"cannot import module {where!r} ({exc}); a target is "
                f"'path/to/file.py[:attr]' or an importable 'package.module:attr'"
            ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TargetError(f"{where} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, SimulationBuilder):
        obj = obj()
    if not isinstance(obj, SimulationBuilder):
        raise TargetError(
            f"{where}:{attr} is {type(obj).__name__}, expected a SimulationBuilder "
            f"or a function returning one"
        )
    return obj

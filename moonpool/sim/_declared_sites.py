"""Coverage sites known before any seed runs them.

A ``sometimes`` or ``reachable`` is tallied when it runs; one that no seed ever
reaches would simply never appear, and the report could not say MISS -- the one
thing a coverage site is for.  So, before the first seed, the runtime reads the
source of every registered process and workload (the function, or the class,
nested functions included) and registers each ``sometimes(cond, "message")`` and
``reachable("message")`` call in it whose message is a string literal.  Sites
in other functions (helpers the registered code calls) are tallied when they
run, as before.

Only calls to moonpool's own functions count: names imported with
``from moonpool.sim import sometimes, reachable`` (possibly renamed), or
attributes of ``moonpool.sim``.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable
from functools import cache

__all__ = ["declared_sites"]

_KINDS = {"sometimes": 1, "reachable": 0}  # kind -> position of the message argument


def declared_sites(objects: Iterable[object]) -> list[tuple[str, str]]:
    """(kind, message) of every coverage site in the source of ``objects``."""
    sites: list[tuple[str, str]] = []
    for obj in objects:
        try:
            target = inspect.unwrap(obj)  # type: ignore[arg-type]
            path = inspect.getsourcefile(target)
            lines, first = inspect.getsourcelines(target)
        except (OSError, TypeError):
            continue
        if path is None:
            continue
        for site in _sites_in(path, first, first + len(lines) - 1):
            if site not in sites:
                sites.append(site)
    return sites


@cache
def _sites_in(path: str, first: int, last: int) -> tuple[tuple[str, str], ...]:
    """The sites of ``path`` between lines ``first`` and ``last`` (imports: whole file)."""
    try:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return ()
    names: dict[str, str] = {}  # local name -> kind
    modules: set[str] = set()  # local names bound to moonpool.sim
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "moonpool.sim":
            for alias in node.names:
                if alias.name in _KINDS:
                    names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module == "moonpool":
            modules.update(a.asname or a.name for a in node.names if a.name == "sim")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "moonpool.sim" and alias.asname:
                    modules.add(alias.asname)
    found: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not first <= node.lineno <= last:
            continue
        kind = _kind_of(node.func, names, modules)
        if kind is None:
            continue
        message = _message(node, _KINDS[kind])
        if message is not None:
            found.append((kind, message))
    return tuple(found)


def _kind_of(func: ast.expr, names: dict[str, str], modules: set[str]) -> str | None:
    if isinstance(func, ast.Name):
        return names.get(func.id)
    if isinstance(func, ast.Attribute) and func.attr in _KINDS:
        base = func.value
        if isinstance(base, ast.Name) and base.id in modules:
            return func.attr
        if (
            isinstance(base, ast.Attribute)
            and base.attr == "sim"
            and isinstance(base.value, ast.Name)
            and base.value.id == "moonpool"
        ):
            return func.attr
    return None


def _message(call: ast.Call, position: int) -> str | None:
    for keyword in call.keywords:
        if keyword.arg == "message":
            value: ast.expr | None = keyword.value
            break
    else:
        value = call.args[position] if len(call.args) > position else None
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    return None

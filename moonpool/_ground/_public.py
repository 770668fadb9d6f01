"""Public names for what a package exports from its private modules.

A class defined in ``moonpool/transport/_errors.py`` and exported by
``moonpool.transport`` should be shown as ``moonpool.transport.TransportTimeout``
-- in tracebacks, reprs, pytest's failure lines and the API reference -- not by
the file it happens to live in, which is no promise.  Pickles stay valid: the
public module has the name too.

One exception: msgspec resolves a ``Struct``'s string annotations in the
namespace of its ``__module__``, so a struct whose field types are not all
importable from the public package keeps its private module (it would fail to
encode otherwise).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

__all__ = ["publish"]

# Private homes whose exports a public package may claim as its own.
_SHARED = "moonpool._ground."


def publish(package: str, namespace: Mapping[str, object], exported: Iterable[str]) -> None:
    """Set ``__module__`` to ``package`` on each exported class and function that
    lives in one of its private modules (or in ``moonpool._ground``)."""
    for name in exported:
        value = namespace[name]
        if not isinstance(value, type | types.FunctionType):
            continue
        module = value.__module__
        if value.__name__ != name:
            continue  # an alias (``random`` for sim_random): its own name would not resolve
        if not module.startswith((package + "._", _SHARED)):
            continue
        if (
            isinstance(value, type)
            and issubclass(value, msgspec.Struct)
            and not _resolves_in(value, dict(namespace))
        ):
            continue
        value.__module__ = package


def _resolves_in(struct: type[Any], namespace: dict[str, Any]) -> bool:
    try:
        typing.get_type_hints(struct, globalns=namespace)
    except NameError:
        return False
    return True

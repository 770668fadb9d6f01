"""The storage of a ``ProcessContext`` built without one: it says so on first use."""

from __future__ import annotations

from typing import Any, NoReturn, final

__all__ = ["NO_STORAGE"]

_OPERATIONS = frozenset({"open", "list", "exists", "remove", "rename", "sync"})


@final
class _NoStorage:
    """Stands in for ``ProcessContext.storage`` when none was given."""

    def __repr__(self) -> str:
        return "<no storage>"

    def __getattr__(self, name: str) -> Any:
        if name not in _OPERATIONS:
            raise AttributeError(name)
        return self._missing

    async def _missing(self, *args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError(
            "this ProcessContext has no storage: the simulation gives each process a "
            "SimStorage; outside one, pass storage=RealStorage(directory) when you "
            "build the context"
        )


NO_STORAGE: Any = _NoStorage()

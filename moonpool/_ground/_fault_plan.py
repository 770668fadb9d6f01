"""Fault plans: which of a seed's faults may happen, named so that a replay finds them.

Shrinking a failure (``--shrink``) replays its seed with some faults suppressed.
For that, every fault needs a name that means the same thing in the replay:
``reset/server->client-0@346#0`` is the reset of the write that starts at byte
346 of the server -> client-0 direction (``#1`` would be a second decision at
that byte: the resend after the first), ``connect_failure/client->server:4500#2``
the third connect refused on that pair, ``buggify/kv.py:apply+3#0`` the first
firing of that buggify site, ``attrition#4`` the fifth kill attrition drew,
``partition#1`` the second random partition.  Each such decision has dice of its
own (see :mod:`moonpool.net._faults`), so suppressing one fault leaves every
other where it was; the ordinal counts the decisions that came up "fault",
suppressed or not, so it does not shift either.

A plan is the set of fault names allowed to happen: a seed replayed with a plan
injects only those (every other fault decision is still drawn, then dropped).
It is written as the names separated by commas (``none`` for the empty plan),
which is what ``--fault-plan`` takes and ``--shrink`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import final

__all__ = ["InjectedFault", "format_fault_plan", "parse_fault_plan"]


@final
@dataclass(frozen=True)
class InjectedFault:
    """A fault that happened in a seed: its name (``id``), when, where, and what it was."""

    id: str
    family: str
    time: float
    host: str
    text: str

    def describe(self) -> str:
        """One readable line: ``reset client-1->server:4500 at 1.234 s``."""
        return f"{self.text} at {self.time:.3f} s"


InjectedFault.__module__ = "moonpool.sim"


def format_fault_plan(ids: Iterable[str]) -> str:
    """The plan as ``--fault-plan`` takes it."""
    text = ",".join(ids)
    return text or "none"


def parse_fault_plan(text: str) -> frozenset[str]:
    """The fault names of a plan written by :func:`format_fault_plan`.

    Raises ``ValueError`` naming the first entry that is not a fault name.
    """
    text = text.strip()
    if text in ("", "none"):
        return frozenset()
    ids = [part.strip() for part in text.split(",")]
    for fault_id in ids:
        base, hash_sign, ordinal = fault_id.rpartition("#")
        if not hash_sign or not base or not ordinal.isdigit():
            raise ValueError(
                f"{fault_id!r} is not a fault name: a fault plan is names such as "
                f"'reset/server->client-0@346#0' separated by commas (as --shrink prints "
                f"them), or 'none'"
            )
    return frozenset(ids)

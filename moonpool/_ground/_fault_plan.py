"""Fault plans: which of a seed's faults may happen, named so that a replay finds them.

Shrinking a failure (``--shrink``) replays its seed with some faults suppressed.
For that, every fault needs a name that means the same thing in the replay:
``reset/client-1->server#2`` is the third reset the dice decided on the
client-1 -> server direction, ``buggify/kv.py:apply+3#0`` the first firing of
that buggify site, ``attrition#4`` the fifth kill attrition drew.  Each such
decision is drawn from a random stream keyed by what it decides (see
:mod:`moonpool.net._faults`), so suppressing one fault leaves the dice of every
other where they were; the ordinal counts the decisions that came up "fault",
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
                f"'reset/client->server:4500#0' separated by commas (as --shrink prints "
                f"them), or 'none'"
            )
    return frozenset(ids)

"""Antithesis/FoundationDB-style assertions that are tallied across iterations.

``always`` and ``unreachable`` are safety properties: one violation fails the
iteration (and raises at the call, so the traceback points at it).
``sometimes`` and ``reachable`` are liveness hints: they must be satisfied in at
least one iteration of the simulation, otherwise the report marks them MISS --
which usually means the test never exercised the path it claims to cover.

A site is identified by its kind and message, so use a distinct message per site.
Keyword arguments (``always(ok, "balance matches", balance=b, expected=e)``) are
the values worth seeing when it fails: shown in the failure and its JSON
(``FailureRecord.details``), never part of the site's identity or the trace hash
(a value's ``repr`` need not be deterministic: a set's order is not).
The ``sometimes``/``reachable`` calls written (with a literal message) in the
registered processes and workloads themselves are known before the first seed
(see ``_declared_sites``), so one that no seed reaches is reported as MISS and
keeps ``UntilAllSometimesReached`` going; sites in helpers count once reached.
Outside a simulation every function here does nothing.
"""

from __future__ import annotations

import reprlib

from moonpool._ground._run import AssertionRecord, current_run

__all__ = ["AssertionViolation", "always", "reachable", "sometimes", "unreachable"]


class AssertionViolation(AssertionError):
    """An ``always`` was false or an ``unreachable`` was reached inside a simulation."""


def _record(kind: str, message: str, condition: bool) -> AssertionRecord | None:
    run = current_run()
    if run is None:
        return None
    key = (kind, message)
    record = run.assertions.get(key)
    if record is None:
        record = run.assertions[key] = AssertionRecord(kind, message)
    record.hits += 1
    if condition:
        record.true_count += 1
    else:
        record.false_count += 1
    return record


def always(condition: bool, message: str, **details: object) -> None:
    """Assert ``condition`` every time this line runs in a simulation.

    ``details`` are shown when it is false (see the module doc).
    """
    if _record("always", message, bool(condition)) is not None and not condition:
        _violate(f"always({message!r}) was false", details)


def sometimes(condition: bool, message: str, **details: object) -> None:
    """Require ``condition`` to be true at least once across the simulation's iterations.

    The first time it is true in a seed goes on the seed's timeline, with
    ``details``; they do not change the site.
    """
    record = _record("sometimes", message, bool(condition))
    if record is not None and condition and record.true_count == 1:
        _first_time(f"sometimes({message!r}) true", details)


def reachable(message: str, **details: object) -> None:
    """Require this line to run at least once across the simulation's iterations.

    The first time in a seed goes on the seed's timeline, with ``details``.
    """
    record = _record("reachable", message, True)
    if record is not None and record.true_count == 1:
        _first_time(f"reachable({message!r}) reached", details)


def _first_time(description: str, details: dict[str, object]) -> None:
    run = current_run()
    assert run is not None
    run.note("assertion", _with(description, _shown(details)))


def unreachable(message: str, **details: object) -> None:
    """Fail the iteration if this line ever runs in a simulation (showing ``details``)."""
    if _record("unreachable", message, True) is not None:
        _violate(f"unreachable({message!r}) was reached", details)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxtuple = 20


def _violate(description: str, details: dict[str, object]) -> None:
    run = current_run()
    assert run is not None
    run.assertion_failures.append(description)
    # The site, not its values: the trace hash must not depend on a value's repr.
    run.trace_text(f"violation:{description}")
    shown = _shown(details)
    if shown and not run.violation_details:
        run.violation_details = shown
    description = _with(description, shown)
    run.note("assertion", description)
    raise AssertionViolation(description)


def _shown(details: dict[str, object]) -> dict[str, str]:
    return {name: _REPR.repr(value) for name, value in details.items()}


def _with(description: str, shown: dict[str, str]) -> str:
    """``description`` followed by ``with name=value, ...`` when there are values."""
    if not shown:
        return description
    return description + " with " + ", ".join(f"{name}={text}" for name, text in shown.items())

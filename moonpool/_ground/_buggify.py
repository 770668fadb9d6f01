"""Buggify: fault injection sites placed in code by its authors.

The idea comes from FoundationDB's ``BUGGIFY`` macro: a line of code that, in
simulation only, sometimes does the unusual thing (a delay, a short write, an
early error) so that rare paths get exercised on purpose.  Each call site is
*activated* or not once per seed; an active site then fires with a probability on
each call.  Deciding activation per site -- rather than flipping a coin per call
-- gives some seeds where a site fires a lot and others where it never fires,
which explores far more combinations than uniform noise.

Outside a simulation, or when the builder did not call ``enable_buggify()``,
``buggify()`` is always ``False`` and costs one context-variable lookup.  It is
also ``False`` once a simulation's chaos has stopped (after every workload's
``run`` returned): the settle and check phases see a quiet system.

A site is named ``file.py:function+offset`` -- the file's base name, the
function's qualified name and the line's offset inside it.  Unlike a module
name it is the same whether the file was run by the CLI, imported by a test or
loaded under another package name, and unlike an absolute line number it does
not move when lines are added above the function, so a seed keeps replaying
(and keeps activating the same sites) across such edits.
"""

from __future__ import annotations

import os
import sys
from types import CodeType

from moonpool._ground._run import current_run, derive_random

__all__ = ["buggify", "buggify_with_prob"]

DEFAULT_FIRE_PROBABILITY = 0.25


def buggify() -> bool:
    """True when this call site is active for this seed and fires this time."""
    return _decide(DEFAULT_FIRE_PROBABILITY, depth=2)


def buggify_with_prob(probability: float) -> bool:
    """Like :func:`buggify`, firing with ``probability`` once the site is active."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"buggify probability must be within [0, 1], got {probability!r}")
    return _decide(probability, depth=2)


_site_names: dict[tuple[CodeType, int], str] = {}


def site_name(code: CodeType, line: int) -> str:
    """The stable name of the buggify site at ``line`` of ``code`` (see the module doc)."""
    key = (code, line)
    name = _site_names.get(key)
    if name is None:
        name = (
            f"{os.path.basename(code.co_filename)}:{code.co_qualname}+{line - code.co_firstlineno}"
        )
        _site_names[key] = name
    return name


def _decide(probability: float, depth: int) -> bool:
    run = current_run()
    if run is None or not run.buggify_enabled or not run.chaos_active:
        return False
    frame = sys._getframe(depth)
    site = site_name(frame.f_code, frame.f_lineno)
    sites = run.buggify_sites
    if site in sites:
        stream = sites[site]
    else:
        # Activation depends only on (seed, site), not on which site is reached
        # first; an active site then draws its firings from the same stream, its
        # own, so that suppressing one firing (a shrink) moves no other site's dice.
        stream = derive_random(run.seed, site)
        if stream.random() >= run.buggify_activation:
            stream = None
        sites[site] = stream
    if stream is None or stream.random() >= probability:
        return False
    if not run.admit_fault(f"buggify/{site}", "buggify", f"buggify {site}"):
        return False
    run.faults["buggify"] = run.faults.get("buggify", 0) + 1
    return True

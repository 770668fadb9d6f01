"""Buggify: fault injection sites placed in code by its authors.

The idea comes from FoundationDB's ``BUGGIFY`` macro: a line of code that, in
simulation only, sometimes does the unusual thing (a delay, a short write, an
early error) so that rare paths get exercised on purpose.  Each call site is
*activated* or not once per seed; an active site then fires with a probability on
each call.  Deciding activation per site -- rather than flipping a coin per call
-- gives some seeds where a site fires a lot and others where it never fires,
which explores far more combinations than uniform noise.

Outside a simulation, or when the builder did not call ``enable_buggify()``,
``buggify()`` is always ``False`` and costs one context-variable lookup.
"""

from __future__ import annotations

import sys

from moonpool.sim._state import current_run, derive_random

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


def _decide(probability: float, depth: int) -> bool:
    run = current_run()
    if run is None or not run.buggify_enabled:
        return False
    frame = sys._getframe(depth)
    # Module name + line, not the file path: the same site must have the same
    # identity on every machine, or a seed would replay differently elsewhere.
    site = f"{frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"
    active = run.buggify_sites.get(site)
    if active is None:
        # Activation depends only on (seed, site), not on which site is reached first.
        active = derive_random(run.seed, site).random() < run.buggify_activation
        run.buggify_sites[site] = active
    if not active:
        return False
    fired = run.buggify_random.random() < probability
    if fired:
        run.record_fault("buggify", site)
    return fired

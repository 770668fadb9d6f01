"""Storage tests run once per anyio backend, through anyio's pytest plugin.

As in ``tests/real``: tests here are marked ``anyio`` explicitly, and this
fixture makes each run on trio and asyncio.  A store that runs on one backend
only (``SimStorage``: trio) skips the other in its own parametrisation.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend

"""Real-network tests run once per anyio backend, through anyio's pytest plugin.

pytest-trio is installed too but its ``trio_mode`` stays off: tests here are
marked ``anyio`` explicitly, and this fixture makes each run on trio and asyncio.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend

import os
import tempfile

import pytest

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    # The failure database replays failing seeds first; tests that plant bugs
    # must not leave seeds in the checkout (nor read a developer's), so the
    # session gets a database of its own.  Tests of the database itself unset it.
    os.environ.setdefault("MOONPOOL_DATABASE", tempfile.mkdtemp(prefix="moonpool-test-db-"))

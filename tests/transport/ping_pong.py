"""The ping-pong example, loaded once for the transport tests."""

from __future__ import annotations

from tests.examples import EXAMPLES, load_example

example = load_example("ping_pong")
PATH = EXAMPLES / "ping_pong.py"

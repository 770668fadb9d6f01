"""A user's simulation type-checks under ``mypy --strict`` with no ``Any`` and no ignores."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

USER_CODE = """
from moonpool.sim import ProcessContext, SimulationBuilder, WorkloadContext
from moonpool.transport import (
    ClientTransport,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    ServerTransport,
)


async def server(ctx: ProcessContext) -> None:
    async with ServerTransport.bind(ctx.network, ctx.address, max_frame_size=65536) as t:
        reveal_type(t)

        async def echo(request: ReceivedEnvelope[RequestResponseEnvelope]) -> bytes:
            return request.payload

        await t.serve(echo)


async def client(ctx: WorkloadContext) -> None:
    async with ClientTransport(ctx.network) as transport:
        reply: bytes = await transport.get_reply(ctx.peers["server"], b"ping", timeout=5)
        assert reply == b"ping"


def simulation() -> SimulationBuilder:
    return SimulationBuilder().register_process("server", server).register_workload("c", client)
"""


def _mypy(tmp_path: Path, code: str) -> tuple[str, int]:
    source = tmp_path / "user_simulation.py"
    source.write_text(code)
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / ".mypy"), str(source)]
    )
    return stdout + stderr, status


def test_a_typed_simulation_passes_strict_and_bind_knows_its_envelope(tmp_path: Path) -> None:
    output, status = _mypy(tmp_path, USER_CODE)
    notes = [line for line in output.splitlines() if "error" in line]
    assert not notes, output
    assert 'Revealed type is "moonpool.transport._server.ServerTransport[' in output
    assert "RequestResponseEnvelope]" in output
    assert status == 0  # reveal_type's line is a note, not an error


def test_a_mistyped_option_or_handler_is_an_error(tmp_path: Path) -> None:
    wrong_option = USER_CODE.replace("max_frame_size=65536", "max_frame_size='64k'")
    output, status = _mypy(tmp_path, wrong_option)
    assert status == 1 and 'No overload variant of "bind"' in output, output
    # A handler for another envelope than the server's is refused by serve().
    wrong_handler = USER_CODE.replace(
        "ReceivedEnvelope[RequestResponseEnvelope]", "ReceivedEnvelope[CheckedEnvelope]"
    ).replace("    ClientTransport,\n", "    CheckedEnvelope,\n    ClientTransport,\n")
    output, status = _mypy(tmp_path, wrong_handler)
    assert status == 1 and 'Argument 1 to "serve"' in output, output

"""The public names DESIGN.md promises, importable from where it says."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

CONTRACT = {
    "moonpool.sim": [
        "SimulationBuilder", "WorkloadContext", "ProcessContext", "Attrition",
        "SimulationReport", "SimulationFailed",
        "FixedCount", "TimeLimit", "UntilAllSometimesReached", "ChaosConfig",
        "buggify", "buggify_with_prob", "always", "sometimes", "reachable", "unreachable",
        "random",
    ],
    "moonpool.net": ["NetworkProvider", "SimNetwork", "RealNetwork", "ChaosConfig"],
    "moonpool.storage": [
        "StorageProvider", "StorageFile", "SimStorage", "RealStorage", "StorageChaosConfig",
        "StorageError", "SyncFailed", "StorageDown", "FileClosedError", "InvalidFileName",
    ],
    "moonpool.transport": [
        "ClientTransport", "ServerTransport", "ReceivedEnvelope",
        "TransportProtocol", "Transmit", "TransportDriver", "Peer", "PeerConfig",
        "Envelope", "EnvelopeSerializer", "RequestResponseEnvelope",
        "TransportError", "TransportTimeout", "ConnectionFailed", "TransportClosed",
        "SerializationError", "MaybeDelivered", "CircuitOpen", "PeerFailed",
        "FailureMonitor", "DeadLetter", "DeadLetters",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_contract_names_are_exported(module: str) -> None:
    namespace = importlib.import_module(module)
    missing = [name for name in CONTRACT[module] if not hasattr(namespace, name)]
    assert not missing, f"{module} lacks {missing}"
    exported = set(getattr(namespace, "__all__", ()))
    assert not [name for name in CONTRACT[module] if name not in exported]


def test_chaos_config_is_one_class_in_both_places() -> None:
    from moonpool.net import ChaosConfig as from_net
    from moonpool.sim import ChaosConfig as from_sim

    assert from_net is from_sim


def test_transport_errors_form_one_hierarchy() -> None:
    from moonpool import transport

    for name in ("TransportTimeout", "ConnectionFailed", "TransportClosed", "SerializationError"):
        assert issubclass(getattr(transport, name), transport.TransportError)
    assert issubclass(transport.TransportTimeout, TimeoutError)
    assert issubclass(transport.SerializationError, ValueError)


def test_storage_errors_say_what_kind_of_error_they_are() -> None:
    from moonpool import storage

    assert issubclass(storage.SyncFailed, storage.StorageError)
    assert issubclass(storage.StorageDown, storage.StorageError)
    assert issubclass(storage.StorageError, OSError)
    # Misuse is a ValueError, as Python's own closed files and bad arguments are.
    assert issubclass(storage.FileClosedError, ValueError)
    assert issubclass(storage.InvalidFileName, ValueError)
    assert storage.SimStorage.__module__ == "moonpool.storage"


def test_private_modules_stay_private() -> None:
    import moonpool.sim

    assert all(not name.startswith("_") for name in moonpool.sim.__all__)


def test_importing_moonpool_does_not_import_test_tools() -> None:
    """A program using moonpool on real sockets must not pay for pytest at import
    (trio.testing imports it when installed: about 80 ms and a large heap)."""
    code = (
        "import sys, moonpool.sim, moonpool.net, moonpool.transport\n"
        "print(sorted(m for m in ('pytest', '_pytest', 'trio.testing', 'hypothesis')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_network_and_transport_do_not_import_the_simulation_runtime() -> None:
    """DESIGN.md rule 5: arrows run downward; net and transport consult the run state
    in moonpool._ground, never the runtime that sits above them."""
    code = "import sys, moonpool.net, moonpool.transport\nprint('moonpool.sim' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_simulation_names_show_their_public_module() -> None:
    import moonpool.sim

    for name in ("SimulationFailed", "SimulationReport", "ProcessContext", "Attrition"):
        assert getattr(moonpool.sim, name).__module__ == "moonpool.sim"


@pytest.mark.parametrize(
    "package", ["moonpool.sim", "moonpool.net", "moonpool.transport", "moonpool.storage"]
)
def test_every_export_shows_a_public_module_that_gives_it_back(package: str) -> None:
    """Tracebacks and pytest's summary say moonpool.transport.TransportTimeout, not
    moonpool.transport._errors.TransportTimeout (msgspec structs whose field types
    only their own module knows are the documented exception)."""
    import types

    import msgspec

    module = importlib.import_module(package)
    checked = 0
    for name in module.__all__:
        value = getattr(module, name)
        if not isinstance(value, type | types.FunctionType) or value.__name__ != name:
            continue
        if not value.__module__.startswith("moonpool."):
            continue
        is_struct = isinstance(value, type) and issubclass(value, msgspec.Struct)
        if is_struct and "._" in value.__module__:
            continue
        checked += 1
        assert "._" not in value.__module__, (name, value.__module__)
        home = importlib.import_module(value.__module__)
        assert getattr(home, value.__qualname__) is value, (name, value.__module__)
    assert checked >= 10


def test_a_transport_error_is_shown_by_its_public_name() -> None:
    from moonpool.transport import TransportTimeout

    assert repr(TransportTimeout("late")).startswith("TransportTimeout(")
    assert f"{TransportTimeout.__module__}.{TransportTimeout.__qualname__}" == (
        "moonpool.transport.TransportTimeout"
    )


@pytest.mark.parametrize(
    ("variable", "value", "wanted"),
    [
        ("MOONPOOL_SEED", "12,abc", "seeds such as 12,34"),
        ("MOONPOOL_ITERATIONS", "many", "a count such as 100"),
        ("MOONPOOL_SHRINK", "1m", "seconds such as 60"),
    ],
)
def test_a_bad_environment_variable_is_named_in_a_one_line_error(
    variable: str, value: str, wanted: str, tmp_path: Path
) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "ping_pong.py"
    done = subprocess.run(
        [sys.executable, "-m", "moonpool", "run", str(example)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, variable: value},
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"moonpool: {variable}={value!r} in the environment: expected {wanted}"
    ]

"""The README's example program runs and passes, exactly as printed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_example_runs(capsys: object) -> None:
    [example] = _python_blocks((ROOT / "README.md").read_text())
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)
    report = namespace["report"]
    assert getattr(report, "ok", False)
    assert getattr(report, "iterations", 0) >= 1


def test_readme_commands_are_the_ci_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pytest -m "not slow"' in readme
    assert 'python -m pytest -m "not slow"' in ci
    assert "python -m moonpool run examples/ping_pong.py" in readme


def test_readme_limits_paragraph_lists_every_limit_with_its_default() -> None:
    """Each size or time limit of the transport is named in README's "Limits" with
    the default the code has (a new limit, or a changed default, must update it)."""
    import inspect

    from moonpool.transport import ClientTransport, PeerConfig, ServerTransport

    readme = (ROOT / "README.md").read_text()
    limits = readme[readme.index("## Limits") :]
    limits = limits[: limits.index("\n## ", 1)]
    units = {1024 * 1024: "1 MiB", 4 * 1024 * 1024: "4 MiB", 16 * 1024 * 1024: "16 MiB",
             64 * 1024 * 1024: "64 MiB", 64 * 1024: "64 KiB"}  # fmt: skip
    checked = 0
    for cls in (ServerTransport, ClientTransport, PeerConfig):
        for name, parameter in inspect.signature(cls).parameters.items():
            default = parameter.default
            if not name.startswith(("max_", "reconnect_", "receive_")) and not name.endswith(
                "timeout"
            ):
                continue
            if not isinstance(default, int | float) or isinstance(default, bool):
                continue
            shown = units.get(default) if isinstance(default, int) else None
            shown = shown or (f"{default:g} s" if name.endswith("timeout") else f"{default:g}")
            assert f"{name}={shown}" in limits, f"README Limits lacks {name}={shown}"
            checked += 1
    assert checked >= 15

"""The README's example program runs and passes, and its console sessions print what they show."""

from __future__ import annotations

import re
import shutil
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


def test_readme_console_blocks_print_what_they_show(tmp_path: Path) -> None:
    """The walk-through of a failing seed ("Explaining a failure") is real output: each
    ```console block's commands run, on a copy of the examples (the failure database
    they write stays out of the checkout), and print the lines shown, by the rules of
    the docs pages (tests/docs_blocks.py).  A change of schedules that makes its seed
    pass, or its timeline move, fails here instead of leaving the README stale."""
    from tests.docs_blocks import Block
    from tests.test_docs import _run_session

    text = (ROOT / "README.md").read_text()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    sessions = [
        Block("console", match.group(1), text[: match.start()].count("\n") + 1)
        for match in re.finditer(r"```console\n(.*?)```", text, flags=re.DOTALL)
    ]
    assert len(sessions) >= 3, "the README's failing-seed walk-through is gone"
    for block in sessions:
        _run_session(block, "README.md", tmp_path)

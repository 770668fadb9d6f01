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

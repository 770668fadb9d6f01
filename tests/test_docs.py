"""Every code block of the documentation site runs, and shows what it says it shows.

The rules for blocks are in ``tests/docs_blocks.py``.  Each page is one test: its
blocks run in order in a fresh directory, as a reader following the page would.
"""

from __future__ import annotations

import linecache
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_blocks import Block, BlockError, blocks, commands, missing_output

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MARKER = "@@moonpool-docs-command"
SESSION_TIMEOUT = 300.0


def _page_id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def _environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MOONPOOL_", "PYTEST_"))  # the page's commands, not ours
    }
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["COLUMNS"] = "200"  # reports are not wrapped to a narrow terminal
    env["NO_COLOR"] = "1"
    return env


def _run_session(block: Block, page: str, workdir: Path) -> None:
    session = commands(block.text)
    assert session, f"{block.where(page)}: a console block with no '$ ' command"
    script = ["set +e"]
    for index, command in enumerate(session):
        script += [
            command.command,
            "__status=$?",
            f"printf '\\n{MARKER} %d %d\\n' {index} $__status",
            "( exit $__status )",
        ]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=workdir,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=SESSION_TIMEOUT,
        check=False,
    )
    outputs: list[str] = []
    statuses: list[int] = []
    current: list[str] = []
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            _, _, status = line.split()
            outputs.append("\n".join(current))
            statuses.append(int(status))
            current = []
        else:
            current.append(line)
    assert len(outputs) == len(session), (
        f"{block.where(page)}: the session stopped after {len(outputs)} of {len(session)} "
        f"commands:\n{done.stdout[-3000:]}"
    )
    for index, command in enumerate(session):
        shown_next = index + 1 < len(session) and session[index + 1].command == "echo $?"
        assert statuses[index] == 0 or shown_next, (
            f"{block.where(page)}: `{command.command}` exited with status {statuses[index]} "
            f"(follow it with `$ echo $?` if that is what it shows):\n{outputs[index][-3000:]}"
        )
        missing = missing_output(command.expected, outputs[index])
        assert missing is None, (
            f"{block.where(page)}: `{command.command}` did not print {missing!r}; "
            f"it printed:\n{outputs[index][-4000:]}"
        )


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_code_block_of_the_page_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _page_id(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [key for key in os.environ if key.startswith("MOONPOOL_")]:
        monkeypatch.delenv(key)
    try:
        _run_page(name, tmp_path)
    finally:  # the page's modules go with it: another page may have a file of that name
        for module_name, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").is_relative_to(tmp_path):
                del sys.modules[module_name]


def _run_page(name: str, tmp_path: Path) -> None:
    page = DOCS / name
    namespace: dict[str, object] = {"__name__": f"docs_{Path(name).stem.replace('-', '_')}"}
    for block in blocks(page.read_text(encoding="utf-8"), name):
        if block.kind == "file":
            assert block.title is not None
            target = tmp_path / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
            # A module the page imported earlier is imported afresh from its new text
            # (only the page's own: a file named like a stdlib module stays out of it).
            earlier = sys.modules.get(Path(block.title).stem)
            if earlier is not None and Path(getattr(earlier, "__file__", "") or "") == target:
                del sys.modules[Path(block.title).stem]
        elif block.kind == "python":
            where = f"{name}:{block.line}"
            # Tracebacks of a failing block show its lines (numbered from its fence).
            source = "\n" * block.line + block.text
            linecache.cache[where] = (len(source), None, source.splitlines(True), where)
            code = compile(source, where, "exec")
            exec(code, namespace)
        else:
            _run_session(block, name, tmp_path)


def test_the_docs_have_pages() -> None:
    assert len(PAGES) >= 10, PAGES


@pytest.mark.parametrize(
    ("markdown", "kinds"),
    [
        ('```python title="a.py"\nx = 1\n```\n', ["file"]),
        ("```python\nx = 1\n```\n\n```console\n$ true\n```\n", ["python", "console"]),
        ('  ```toml title="pyproject.toml"\n  [project]\n  ```\n', ["file"]),
    ],
)
def test_blocks_are_classified(markdown: str, kinds: list[str]) -> None:
    assert [block.kind for block in blocks(markdown)] == kinds


@pytest.mark.parametrize("markdown", ["```text\nhello\n```\n", "```\nhello\n```\n", "```py\nx\n"])
def test_a_block_that_cannot_be_run_is_an_error(markdown: str) -> None:
    with pytest.raises(BlockError):
        blocks(markdown)


def test_expected_output_is_matched_in_order_with_ellipses() -> None:
    output = "moonpool simulation report\n  iterations: 20 (0 passed, 20 failed)\n  result: FAILURE"
    assert (
        missing_output(("...", "iterations: 20 (... failed)", "result:  FAILURE"), output) is None
    )
    assert missing_output(("result: FAILURE", "iterations: 20"), output) == "iterations: 20"
    assert missing_output(("result: SUCCESS",), output) == "result: SUCCESS"

"""The code blocks of a Markdown page, and what running them means (tests/test_docs.py).

Every fenced block in ``docs/`` is one of three things, and each is run:

* a block with a title (```` ```python title="ids.py" ````) is a **file**: it is
  written to the page's working directory (a later block with the same title
  replaces it -- a tutorial's fixed version), for the blocks after it to use;
* an untitled ```` ```python ```` block is **code**: executed, in page order, in one
  namespace per page, with the working directory on ``sys.path``; it checks what it
  shows with ``assert`` or ``report.assert_success()``;
* a ```` ```console ```` block is a **shell session**: each ``$ command`` runs in bash
  (``python`` and ``moonpool`` are this interpreter's), and the lines shown after it
  must appear in its output in that order -- ``...`` on a line of its own skips any
  number of lines, ``...`` inside a line stands for anything, and spaces need not
  match exactly.  A command must exit with status 0 unless the next command is
  ``echo $?``, which then shows the status.

Anything else (an untitled block in another language) is an error: no block is
silently left unrun.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TITLE = re.compile(r"""title=(?:"([^"]*)"|'([^']*)'|(\S+))""")

Kind = Literal["file", "python", "console"]


@dataclass(frozen=True)
class Block:
    kind: Kind
    text: str
    line: int  # 1-based line of the opening fence, for messages
    title: str | None = None

    def where(self, page: str) -> str:
        return f"{page}:{self.line}"


@dataclass(frozen=True)
class Command:
    command: str
    expected: tuple[str, ...]


class BlockError(ValueError):
    """A block the harness cannot run (unknown kind, unclosed fence)."""


def blocks(markdown: str, page: str = "<page>") -> list[Block]:
    """The fenced code blocks of ``markdown``, in order."""
    found: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and set(lines[i].strip()) == {fence[0]}
        ):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        if i == len(lines):
            raise BlockError(f"{page}:{start + 1}: a code block is never closed")
        i += 1
        found.append(_classify(info, "\n".join(body) + "\n", start + 1, page))
    return found


def _classify(info: str, text: str, line: int, page: str) -> Block:
    language = info.split(maxsplit=1)[0] if info else ""
    title_match = _TITLE.search(info)
    if title_match is not None:
        title = next(group for group in title_match.groups() if group is not None)
        return Block("file", text, line, title)
    if language in ("python", "py"):
        return Block("python", text, line)
    if language == "console":
        return Block("console", text, line)
    raise BlockError(
        f"{page}:{line}: a ```{language or '(no language)'} block with no title: give it a "
        f'title="FILE" (a file the page writes), or make it ```python or ```console'
    )


def commands(session: str) -> list[Command]:
    """The ``$ command`` lines of a console block, each with the output shown after it."""
    found: list[Command] = []
    command: str | None = None
    expected: list[str] = []
    for line in session.splitlines():
        if line.startswith("$ "):
            if command is not None:
                found.append(Command(command, tuple(expected)))
            command, expected = line[2:].strip(), []
        elif command is None:
            if line.strip():
                raise BlockError(f"output before the first '$ ' command: {line!r}")
        else:
            expected.append(line)
    if command is not None:
        found.append(Command(command, tuple(expected)))
    return found


def _pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(" ".join(part.split())) for part in expected.strip().split("...")]
    return re.compile(".*".join(parts))


def missing_output(expected: tuple[str, ...], output: str) -> str | None:
    """The first expected line not found (in order) in ``output``; None if all are."""
    actual = [" ".join(line.split()) for line in output.splitlines()]
    position = 0
    for wanted in expected:
        if not wanted.strip() or wanted.strip() == "...":
            continue
        pattern = _pattern(wanted)
        while position < len(actual) and pattern.search(actual[position]) is None:
            position += 1
        if position == len(actual):
            return wanted.strip()
        position += 1
    return None

"""The CLI's progress display, on a real terminal (a pty) and in a log (a pipe)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = (sys.executable, "-m", "moonpool", "run", "--no-database")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")


def _on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pty (as in a terminal); (status, stdout, stderr)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [*RUN, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm-256color"},
    )
    os.close(slave)
    terminal = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        elif process.poll() is not None:
            break
    stdout = process.stdout.read().decode() if process.stdout else ""
    process.wait(timeout=60)
    os.close(master)
    return process.returncode, stdout, terminal.decode(errors="replace")


def test_a_terminal_gets_a_live_bar_with_total_rate_and_failures() -> None:
    status, stdout, terminal = _on_a_terminal("examples/ping_pong.py", "--iterations", "30")
    assert status == 0
    assert "30/30" in terminal and "seeds/s" in terminal and "no failures" in terminal
    assert "\x1b[" in terminal  # drawn in place, with colours
    assert "result: SUCCESS" in stdout  # the report itself stays on stdout


def test_failures_so_far_show_on_the_terminal() -> None:
    status, _, terminal = _on_a_terminal(
        "examples/lost_update.py", "--iterations", "30", "--base-seed", "5"
    )
    assert status == 1
    assert re.search(r"\d+ failed", terminal), terminal  # the failures so far


def test_explicit_seeds_give_the_total_and_an_open_ended_run_counts_seeds() -> None:
    status, _, terminal = _on_a_terminal(
        "tests/sim/worker_targets.py:chatty", "--seed", "1", "--seed", "2"
    )
    assert status == 0 and "2/2" in terminal
    status, _, terminal = _on_a_terminal("tests/sim/worker_targets.py:until_covered")
    assert status == 0 and " seeds " in terminal and "/50" not in terminal


def test_a_log_gets_plain_periodic_lines_and_quiet_gets_nothing() -> None:
    logged = subprocess.run(
        [*RUN, "examples/ping_pong.py", "--iterations", "100", "--base-seed", "424242"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert logged.returncode == 0
    assert logged.stderr.strip().splitlines() == [
        logged.stderr.strip().splitlines()[0]
    ] and logged.stderr.startswith("[100/100] seed ")
    assert "\x1b[" not in logged.stderr
    quiet = subprocess.run(
        [*RUN, "tests/sim/worker_targets.py:chatty", "--seed", "1", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0 and quiet.stderr == ""

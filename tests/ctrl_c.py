"""Pressing Ctrl-C on a program started by a test, as a terminal user would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any


def start(command: Sequence[str], **options: Any) -> subprocess.Popen[str]:
    """``Popen`` with pipes and SIGINT at its default, even when the tests run as a
    background job (which a shell starts with SIGINT ignored)."""
    return subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint if sys.platform != "win32" else None,
        **options,
    )


def press(process: subprocess.Popen[str], pauses: Sequence[float]) -> tuple[str, str]:
    """Send one SIGINT after each pause (seconds), then collect the output; the
    process is killed if it has not exited 30 s later."""
    try:
        for pause in pauses:
            time.sleep(pause)
            process.send_signal(signal.SIGINT)
        return process.communicate(timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

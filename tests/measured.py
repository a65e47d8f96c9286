"""Running imgscan as a child process and reading its own peak RSS (os.wait4), for memory-bound tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO


def run_imgscan(
    args: tuple[str, ...],
    env: dict[str, str],
    out: BinaryIO,
    err: BinaryIO,
    timeout: float,
    cwd: Path | None = None,
) -> tuple[int, int]:
    """(exit code, peak RSS in kB) of `python -m imgscan ARGS`, killed after timeout seconds (exit -9)."""
    cmd = [sys.executable, "-m", "imgscan", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss

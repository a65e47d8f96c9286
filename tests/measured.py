"""Running imgscan as a child process and reading its own peak RSS, for memory-bound tests.

The kernel carries a process's peak RSS across exec, and a child started from pytest begins as a (v)fork
of pytest, so the peak os.wait4 reports for it is at least pytest's own size (over 200 MB late in a full
run). imgscan is therefore started by a small wrapper process, and the peak measured is the wrapper's
child's: a fork of a 10 MB interpreter, then imgscan alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "imgscan", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_imgscan(
    args: tuple[str, ...],
    env: dict[str, str],
    out: BinaryIO,
    err: BinaryIO,
    timeout: float,
    cwd: Path | None = None,
) -> tuple[int, int]:
    """(exit code, peak RSS in kB) of `python -m imgscan ARGS`, killed after timeout seconds (exit -9)."""
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as rss:
        cmd = [sys.executable, "-c", _WRAPPER, rss.name, *args]
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            returncode = proc.wait()
        finally:
            timer.cancel()
        if killed.is_set():
            return -9, 0
        return (returncode if returncode < 128 else returncode - 256), int(rss.read() or 0)

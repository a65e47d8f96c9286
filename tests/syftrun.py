"""syft, the reference scanner, run the one way the tests need it: quiet, no update check, one output."""

from __future__ import annotations

import os
import shutil
import subprocess


def run_syft(ref: str, output: str, timeout: float = 600) -> str:
    """syft's stdout for ref (syft's own scheme syntax) in the given -o format; a failure fails the test."""
    syft = shutil.which("syft")
    assert syft is not None, "callers skip when syft is missing"
    env = dict(os.environ, SYFT_CHECK_FOR_APP_UPDATE="false")
    proc = subprocess.run(
        [syft, "-q", ref, "-o", output], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout

"""The status line while layers are read: on a terminal (a real pty) it counts the layers and erases
itself; in a pipe there is none, so stderr stays empty or one error line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "oci"
CLEAR = "\r\x1b[K"


def _stderr_on_a_terminal(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "IMGSCAN_NO_PROGRESS"}
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgscan", *args], stdout=subprocess.DEVNULL, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode()


def test_layer_count_on_a_terminal_then_erased() -> None:
    code, text = _stderr_on_a_terminal("ls", str(DEMO), "-R")
    assert code == 0
    assert f"{CLEAR}imgscan: read 3 of 3 layers (" in text, repr(text)
    assert text.endswith(CLEAR), repr(text)


def test_nothing_in_a_pipe() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgscan", "ls", str(DEMO), "-R"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == ""


def test_a_failing_layer_on_a_terminal_leaves_one_error_line(tmp_path: Path) -> None:
    """The status line is erased before the error is printed, so the terminal shows the error alone."""
    layout = tmp_path / "oci"
    shutil.copytree(DEMO, layout)
    biggest = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) // 2])
    code, text = _stderr_on_a_terminal("ls", str(layout), "-R")
    assert code == 2
    visible = text.rsplit(CLEAR, 1)[-1]
    assert visible.startswith("imgscan: error: ") and visible.count("\n") == 1, repr(text)

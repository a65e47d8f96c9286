"""Wall time and peak memory of a command and all its descendants (sampled from /proc every 50 ms).

Peak RSS is reported two ways: the largest single process (the kernel's ru_maxrss, exact) and the
largest sum over the process tree at one instant (sampled, so a short spike can be missed).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measurement:
    seconds: float
    max_process_rss_mb: float
    max_tree_rss_mb: float
    returncode: int


def _tree_rss(root: int) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(name)] = int(fields[1])
        rss[int(name)] = int(fields[21]) * _PAGE
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Measurement:
    """Run cmd (stdout discarded) and measure it; ru_maxrss of a fresh wrapper isolates this command."""
    wrapper = (
        "import resource, subprocess, sys; "
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
    )
    start = time.perf_counter()
    proc = subprocess.Popen(["python3", "-c", wrapper, *cmd], stdout=subprocess.PIPE, text=True, env=env)
    peak_tree = 0
    while proc.poll() is None:
        peak_tree = max(peak_tree, _tree_rss(proc.pid) - _wrapper_rss(proc.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    maxrss_kb, rc = proc.stdout.read().split() if proc.stdout else ("0", "1")
    return Measurement(seconds, int(maxrss_kb) / 1024, peak_tree / 2**20, int(rc))


def _wrapper_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[21]) * _PAGE
    except OSError:
        return 0


def print_table(
    runs: dict[str, Measurement], extra_rows: tuple[str, ...] = (), per_process: bool = True
) -> None:
    """The markdown table every benchmark prints: wall time and peak RSS per command (extra_rows, already
    formatted, come first)."""
    process = " peak RSS, largest process (MB) |" if per_process else ""
    print(f"| command | wall s |{process} peak RSS, process tree (MB) |")
    print("|---|---:|" + ("---:|" if per_process else "") + "---:|")
    for row in extra_rows:
        print(row)
    for name, m in runs.items():
        status = "" if m.returncode == 0 else f" (exit {m.returncode})"
        process_cell = f" {m.max_process_rss_mb:.0f} |" if per_process else ""
        print(f"| {name}{status} | {m.seconds:.1f} |{process_cell} {m.max_tree_rss_mb:.0f} |")

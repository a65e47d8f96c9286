"""Compare imgscan's merged view with a tree a real tool unpacked (umoci unpack, unsquashfs).

Whole trees are compared: every path, its type, permission bits, symlink target and (for files) size.
Directory sizes depend on the host filesystem and are not compared. A hardlink is a file on disk.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}


def host_tree(root: str) -> dict[str, tuple]:
    """{relative path: (type, mode, size or None, symlink target or None)} of an unpacked rootfs."""
    tree: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = _KINDS[stat.S_IFMT(st.st_mode)]
            rel = os.path.relpath(full, root)
            target = os.readlink(full) if kind == "symlink" else None
            size = st.st_size if kind == "file" else None
            tree[rel] = (kind, stat.S_IMODE(st.st_mode), size, target)
    return tree


def imgscan_entries(ref: str, *extra: str) -> list[dict]:
    """Run the real CLI (`imgscan ls REF -R --json`) and return its entries."""
    out = subprocess.run(
        [sys.executable, "-m", "imgscan", "ls", ref, "-R", "--json", *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["entries"]


def imgscan_tree(ref: str, *extra: str) -> dict[str, tuple]:
    tree: dict[str, tuple] = {}
    for e in imgscan_entries(ref, *extra):
        kind = "file" if e["type"] == "hardlink" else e["type"]
        size = e["size"] if kind == "file" else None
        target = e["link_target"] if kind == "symlink" else None
        tree[e["path"].lstrip("/")] = (kind, int(e["mode"], 8), size, target)
    return tree


def tree_differences(expected: dict[str, tuple], actual: dict[str, tuple], limit: int = 30) -> list[str]:
    """Human-readable differences, at most `limit` of them, after a count line when any exist."""
    diffs = []
    for path in sorted(expected.keys() - actual.keys()):
        diffs.append(f"missing from imgscan: {path} {expected[path]}")
    for path in sorted(actual.keys() - expected.keys()):
        diffs.append(f"extra in imgscan: {path} {actual[path]}")
    for path in sorted(expected.keys() & actual.keys()):
        if expected[path] != actual[path]:
            diffs.append(f"differs: {path} expected {expected[path]} got {actual[path]}")
    if not diffs:
        return []
    return [f"{len(diffs)} differences", *diffs[:limit]]

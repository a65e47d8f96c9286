"""`diff --files`: paths added, removed and changed between two merged images (both sides images)."""

from __future__ import annotations

from typing import Any

from imgscan.layers.entry import HARDLINK, Entry
from imgscan.layers.fsview import FileSystem

_FIELDS = ("type", "size", "mode", "sha256", "link_target")


def _facts(entry: Entry) -> dict[str, Any]:
    """What a change is judged by: type, size, mode, sha256 (ELF files only: imgscan hashes no other
    file) and the symlink target. Not mtime or owner, which rebuilds change without meaning anything."""
    return {
        "type": "file" if entry.kind == HARDLINK else entry.kind,
        "size": entry.size,
        "mode": f"{entry.mode:04o}",
        "sha256": entry.sha256,
        "link_target": None if entry.kind == HARDLINK else entry.link_target,
    }


def diff_files(a: FileSystem, b: FileSystem) -> dict[str, list[Any]]:
    """{added: [path], removed: [path], changed: [{path, before{...}, after{...}}]}, paths sorted."""
    before = {"/" + path: _facts(entry) for path, entry in a.walk()}
    after = {"/" + path: _facts(entry) for path, entry in b.walk()}
    changed = []
    for path in sorted(before.keys() & after.keys()):
        old, new = before[path], after[path]
        fields = [f for f in _FIELDS if old[f] != new[f]]
        if fields:
            changed.append(
                {"path": path, "before": {f: old[f] for f in fields}, "after": {f: new[f] for f in fields}}
            )
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": changed,
    }

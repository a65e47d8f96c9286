"""The distro of an image, from os-release: the purl namespace and 'distro' qualifier of its OS packages."""

from __future__ import annotations

import re
import shlex

from imgscan.catalog.model import OsRelease
from imgscan.layers.fsview import FileSystem, SymlinkLoop

# /etc/os-release wins; /usr/lib/os-release is the fallback (os-release(5)). /etc/os-release is usually a
# symlink to ../usr/lib/os-release, which lookup() follows inside the image.
OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")
_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


def parse_os_release(data: bytes) -> dict[str, str]:
    """KEY=value lines with shell quoting; malformed lines are skipped (os-release(5) says so)."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        if not _KEY.fullmatch(key):
            continue
        try:
            words = shlex.split(raw, comments=False, posix=True)
        except ValueError:  # an unterminated quote
            continue
        fields[key] = " ".join(words)
    return fields


def os_release(fs: FileSystem) -> OsRelease | None:
    """The first readable os-release of the image, or None when it has none."""
    for path in OS_RELEASE_PATHS:
        try:
            entry = fs.lookup(path)
        except SymlinkLoop:
            continue
        if entry is None or entry.content is None:
            continue
        fields = parse_os_release(entry.content)
        if not fields:
            continue
        return OsRelease(
            id=fields.get("ID", "linux").lower(),  # os-release(5): ID defaults to "linux"
            version_id=fields.get("VERSION_ID") or None,
            name=fields.get("NAME") or None,
            pretty_name=fields.get("PRETTY_NAME") or None,
            version_codename=fields.get("VERSION_CODENAME") or None,
            id_like=fields.get("ID_LIKE", "").lower().split(),
        )
    return None

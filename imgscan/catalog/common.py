"""What every cataloger shares: captured files, warnings, owned image paths, purls written as syft does."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from imgscan.catalog.model import OsRelease
from imgscan.layers.content import capture_limit
from imgscan.layers.entry import DIR, Entry
from imgscan.layers.fsview import FileSystem, SymlinkLoop
from imgscan.layers.index import Warnings


@dataclass
class Context:
    """One image being catalogued. captured: every merged file whose bytes the layer pass kept (few), so
    catalogers that look anywhere in the image (python, conda) need no walk of their own."""

    fs: FileSystem
    os: OsRelease | None
    captured: list[tuple[str, Entry]] = field(default_factory=list)
    warnings: Warnings = field(default_factory=Warnings)

    @classmethod
    def of(cls, fs: FileSystem, os: OsRelease | None) -> Context:
        captured = [(path, entry) for path, entry in fs.walk() if entry.content is not None]
        return cls(fs, os, captured)

    def read(self, path: str, what: str) -> tuple[bytes | None, Entry | None]:
        """The bytes of the captured file at image path `path` (symlinks followed) and its entry; a file
        that exists but was too large to capture gives a warning and no bytes."""
        canonical, entry = self.resolve(path)
        if entry is None or entry.kind == DIR:
            return None, entry
        if entry.content is None:
            limit = capture_limit(canonical)
            reason = f"over {limit} bytes" if limit and entry.size > limit else "not captured"
            self.warnings.add(f"{what}: not read ({reason})", "/" + canonical)
        return entry.content, entry

    def lookup(self, path: str) -> Entry | None:
        return self.resolve(path)[1]

    def resolve(self, path: str) -> tuple[str, Entry | None]:
        """fs.resolve() with a symlink loop turned into a warning and an absent path."""
        try:
            return self.fs.resolve(path)
        except SymlinkLoop:
            self.warnings.add("symlink loop", "/" + path.lstrip("/"))
            return path, None

    def owned_files(self, paths: Iterable[str]) -> list[str]:
        """Absolute image paths of what a package lists, directories left out, deduplicated in order.

        A path is canonical where the image has it (symlinked parents resolved, so /bin/sh of a merged-/usr
        image reads /usr/bin/sh); a path the image lacks is kept as listed, normalised."""
        out: dict[str, None] = {}
        for raw in paths:
            clean = posixpath.normpath("/" + raw.strip("/")).lstrip("/")
            if not clean or clean == ".":
                continue
            try:
                canonical, entry = self.fs.resolve(clean, follow_last=False)
            except SymlinkLoop:
                canonical, entry = clean, None
            if entry is not None and entry.kind == DIR:
                continue
            path = canonical if entry is not None else clean
            out["/" + path] = None
        return list(out)


def text(data: bytes) -> str:
    """Package metadata is UTF-8 in practice; anything else is kept readable rather than refused."""
    return data.decode("utf-8", "replace")


def distro_qualifier(os: OsRelease | None) -> str:
    """syft's 'distro' qualifier: ID-VERSION_ID (just ID when there is no VERSION_ID)."""
    if os is None:
        return ""
    return "-".join(part for part in (os.id, os.version_id) if part)


def _escape(value: str) -> str:
    """Percent-encoding as syft 1.18's packageurl-go writes it: only '+', '@', '?', '#', ' ' and non-ASCII
    are encoded; everything else (':', '~', '%', '&' ...) is left as is."""
    out = []
    for ch in value:
        if ch in "+@?# " or ord(ch) > 0x7F:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape")))
        else:
            out.append(ch)
    return "".join(out)


def purl(kind: str, namespace: str, name: str, version: str, qualifiers: dict[str, str] | None = None) -> str:
    """pkg:KIND/NAMESPACE/NAME@VERSION?k=v&... with empty qualifiers dropped and keys sorted, as syft does."""
    head = f"pkg:{kind}/"
    if namespace:
        head += "/".join(_escape(part) for part in namespace.split("/")) + "/"
    head += _escape(name)
    if version:
        head += "@" + _escape(version)
    pairs = sorted((k, v) for k, v in (qualifiers or {}).items() if v)
    if pairs:
        head += "?" + "&".join(f"{k}={_escape(v)}" for k, v in pairs)
    return head

"""One filesystem entry as recorded from a layer: metadata only, never file contents."""

from __future__ import annotations

import stat
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgscan.elf.facts import ElfFacts

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHAR = "char"
BLOCK = "block"
FIFO = "fifo"

_TYPE_CHAR = {FILE: "-", DIR: "d", SYMLINK: "l", HARDLINK: "-", CHAR: "c", BLOCK: "b", FIFO: "p"}


@dataclass(slots=True)
class Entry:
    """Metadata of one path. Slotted: an image can hold a million of these.

    link_target: for a symlink the target as stored (resolved later, inside the image root); for a
    hardlink the image path of the file it links to. A merged hardlink carries its target's mode and size.
    layer: index of the layer the entry came from (0 = lowest).
    """

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    layer: int
    link_target: str | None = None
    devmajor: int = 0
    devminor: int = 0
    children: dict[str, Entry] | None = None
    content: bytes | None = None  # captured bytes of the few small files analysers read (content.py)
    elf: ElfFacts | None = None  # facts of an ELF file, read as its bytes streamed past
    sha256: str | None = None  # of an ELF file's bytes: identifies unowned libraries in the SBOM

    def mode_string(self) -> str:
        """Like the first column of `ls -l`."""
        return _TYPE_CHAR[self.kind] + stat.filemode(self.mode)[1:]


def linked_copy(target: Entry, link: Entry) -> Entry | None:
    """What a hardlink shows once its target is known: the target's metadata at the moment the link is
    read (later changes to the target path do not affect it). None for a directory target."""
    if target.kind == DIR:
        return None
    kind = HARDLINK if target.kind in (FILE, HARDLINK) else target.kind
    link_target = link.link_target if kind == HARDLINK else target.link_target
    return replace(target, kind=kind, layer=link.layer, link_target=link_target, children=None)

"""LayerIndex: what one layer adds, deletes and hides, built from a single pass over its entries.

It depends only on the layer's bytes, so layers are indexed independently (in parallel processes) and
merged afterwards in order. Every producer (tar stream, squashfs, host directory) feeds the same builder,
so name checks, whiteout rules and limits live here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgscan.errors import ImgscanError
from imgscan.layers.entry import DIR, HARDLINK, Entry, linked_copy
from imgscan.layers.names import clean_path, split_parent

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile image from exhausting memory or time; each has a CLI flag."""

    max_entries: int = 2_000_000
    max_layer_bytes: int = 256 << 30
    max_inflate_ratio: int = 500
    inflate_ratio_floor: int = 1 << 30


@dataclass
class LayerIndex:
    """The per-layer result. entries keep tar order (last duplicate wins); whiteouts and opaque dirs
    apply to lower layers only."""

    layer: int
    entries: dict[str, Entry] = field(default_factory=dict)
    lower_hardlinks: set[str] = field(default_factory=set)  # entries linking into lower layers
    whiteouts: list[str] = field(default_factory=list)
    opaque_dirs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    diff_id: str | None = None
    uncompressed_size: int | None = None


def relabel(index: LayerIndex, layer: int) -> LayerIndex:
    """The same layer at another position (in another image, or once its position is known): entries
    name their layer by position."""
    index.layer = layer
    for entry in index.entries.values():
        entry.layer = layer
    return index


class Warnings:
    """Counts problems by kind and keeps the first example, so a million hostile entries give one line."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, str]] = {}

    def add(self, kind: str, example: str) -> None:
        count, first = self._seen.get(kind, (0, example))
        self._seen[kind] = (count + 1, first)

    def lines(self) -> list[str]:
        return [
            f"{kind}: {count} entr{'y' if count == 1 else 'ies'} (first: {example!r})"
            for kind, (count, example) in self._seen.items()
        ]


class LayerIndexBuilder:
    """Accepts raw entries from a producer and records them as clean paths.

    whiteouts=False for sources that are a single squashed tree (SIF, host directory), where a file named
    '.wh.x' is just a file.
    """

    def __init__(self, layer: int, limits: Limits, whiteouts: bool = True) -> None:
        self.index = LayerIndex(layer=layer)
        self._limits = limits
        self._whiteouts = whiteouts
        self._warnings = Warnings()
        self._count = 0

    def add(self, name: str, entry: Entry) -> str | None:
        """Record one entry; returns its clean path, or None when it was skipped or is a whiteout.

        For a hardlink, entry.link_target is the raw link name from the layer. The producer may fill the
        recorded entry's content and ELF facts afterwards (collect_content), as the file's bytes pass."""
        self._count += 1
        if self._count > self._limits.max_entries:
            raise ImgscanError(
                f"layer {self.index.layer} has more than {self._limits.max_entries} entries "
                "(raise the limit with --max-entries)"
            )
        path = clean_path(name)
        if path is None:
            self._warnings.add("skipped entries whose names escape the image root or are invalid", name)
            return None
        if name.startswith("/"):
            self._warnings.add("absolute entry names read relative to the image root", name)
        if path == "":
            if entry.kind == DIR:
                self.index.entries[""] = entry
            return None
        parent, base = split_parent(path)
        if self._whiteouts and base.startswith(WHITEOUT_PREFIX):
            self._add_whiteout(parent, base, name)
            return None
        self.index.lower_hardlinks.discard(path)
        if entry.kind == HARDLINK:
            resolved = self._link(entry, name)
            if resolved is None:
                return None
            entry = resolved
        self.index.entries.pop(path, None)  # a later duplicate wins and takes the later position
        self.index.entries[path] = entry
        return path

    def _link(self, entry: Entry, name: str) -> Entry | None:
        """Resolve a hardlink in tar order: to this layer's target as it is now, or (resolved at merge,
        before this layer's whiteouts) to a lower layer's."""
        target_path = clean_path(entry.link_target or "")
        if not target_path:
            self._warnings.add("skipped hardlinks whose targets escape the image root", name)
            return None
        entry.link_target = target_path
        target = self.index.entries.get(target_path)
        if target is None:
            self.index.lower_hardlinks.add(clean_path(name) or "")
            return entry
        linked = linked_copy(target, entry)
        if linked is None:
            self._warnings.add("skipped hardlinks to directories", name)
        return linked

    def _add_whiteout(self, parent: str, base: str, name: str) -> None:
        if base == OPAQUE_MARKER:
            self.index.opaque_dirs.append(parent)
            return
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX):
            self._warnings.add("ignored malformed whiteouts", name)
            return
        self.index.whiteouts.append(f"{parent}/{hidden}" if parent else hidden)

    def warn(self, kind: str, example: str) -> None:
        self._warnings.add(kind, example)

    def finish(self) -> LayerIndex:
        self.index.warnings = self._warnings.lines()
        return self.index

"""Apply layer indexes in order (lowest first) into one FileSystem, with OCI whiteout semantics.

For each layer: opaque directories lose their lower-layer content, whiteouts delete lower-layer paths
(with their subtrees), then the layer's own entries are placed. A directory placed over a directory keeps
the lower children; anything else replaces what the path held. Parent directories that are symlinks are
followed inside the image (as umoci's unpack does); missing parents are created 0755.
"""

from __future__ import annotations

from imgscan.errors import ImgscanError
from imgscan.layers.entry import DIR, Entry, linked_copy
from imgscan.layers.fsview import FileSystem
from imgscan.layers.index import LayerIndex, Warnings
from imgscan.layers.names import split_parent


class _Merger:
    def __init__(self) -> None:
        self.fs = FileSystem(Entry(DIR, 0o755, 0, 0, 0, 0, 0, children={}))
        self.warnings = Warnings()

    def apply(self, index: LayerIndex) -> None:
        layer = index.layer
        for path in index.lower_hardlinks:  # read before this layer's whiteouts, as in tar order
            self._resolve_lower_hardlink(index, path)
        for path in index.opaque_dirs:
            node = self._existing_dir(path)
            if node is not None:
                node.children = {}
        for path in index.whiteouts:
            parent_path, name = split_parent(path)
            parent = self._existing_dir(parent_path)
            if parent is not None:
                parent.children.pop(name, None)  # type: ignore[union-attr]
        for path, entry in index.entries.items():
            self._place(path, entry, layer)

    def _existing_dir(self, path: str) -> Entry | None:
        try:
            node = self.fs.lookup(path)
        except ImgscanError:
            return None
        return node if node is not None and node.kind == DIR else None

    def _place(self, path: str, entry: Entry, layer: int) -> None:
        if path == "":
            entry.children = self.fs.root.children
            self.fs.root = entry
            return
        parent_path, name = split_parent(path)
        parent = self._parent_dir(parent_path, layer, path)
        if parent is None:
            return
        assert parent.children is not None
        old = parent.children.get(name)
        if entry.kind == DIR:
            entry.children = old.children if old is not None and old.kind == DIR else {}
        parent.children[name] = entry

    def _parent_dir(self, parent_path: str, layer: int, path: str) -> Entry | None:
        """The directory a new entry goes into, creating missing ones; None (with a warning) if a
        non-directory or an unresolvable symlink stands in the way."""
        node, canonical = self.fs.root, ""
        for part in parent_path.split("/") if parent_path else ():
            assert node.children is not None
            child = node.children.get(part)
            here = f"{canonical}/{part}" if canonical else part
            if child is None:
                child = node.children[part] = Entry(DIR, 0o755, 0, 0, 0, 0, layer, children={})
            elif child.kind != DIR:
                try:
                    here, child = self.fs.resolve(here)
                except ImgscanError:
                    child = None
                if child is None or child.kind != DIR:
                    self.warnings.add(
                        "skipped entries whose parent is not a directory inside the image", path
                    )
                    return None
            node, canonical = child, here
        return node

    def _resolve_lower_hardlink(self, index: LayerIndex, path: str) -> None:
        entry = index.entries[path]
        target_path = entry.link_target or ""
        try:
            target = self.fs.lookup(target_path, follow_last=False)
        except ImgscanError:
            target = None
        linked = linked_copy(target, entry) if target is not None else None
        if linked is None:
            self.warnings.add("skipped hardlinks to missing files or directories", f"{path} -> {target_path}")
            del index.entries[path]
        else:
            index.entries[path] = linked


def merge(indexes: list[LayerIndex]) -> tuple[FileSystem, list[str]]:
    """The merged view of layers given lowest first, and the warnings merging raised."""
    merger = _Merger()
    for index in indexes:
        merger.apply(index)
    return merger.fs, merger.warnings.lines()

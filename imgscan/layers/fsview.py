"""The merged filesystem of an image: path lookups with symlinks resolved inside the image root.

Nothing here touches the host: '..' stops at the image root and absolute symlink targets start from it,
as they would inside a chroot. Loops end after MAX_SYMLINKS hops, like the kernel's ELOOP.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from imgscan.errors import ImgscanError
from imgscan.layers.entry import DIR, SYMLINK, Entry

MAX_SYMLINKS = 40


class SymlinkLoop(ImgscanError):
    """A path whose resolution needs more than MAX_SYMLINKS symlinks (a loop, or a hostile chain)."""


class FileSystem:
    """A tree of Entry nodes; directories hold their children by name."""

    def __init__(self, root: Entry) -> None:
        self.root = root

    def resolve(self, path: str, follow_last: bool = True) -> tuple[str, Entry | None]:
        """Canonical image path ('a/b', '' = root) of path and its entry, or (path, None) if absent.

        Intermediate symlinks are always followed; the last one only when follow_last. Raises SymlinkLoop.
        """
        parts = deque(path.split("/"))
        names: list[str] = []
        nodes: list[Entry] = [self.root]
        hops = 0
        while parts:
            part = parts.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if names:
                    names.pop()
                    nodes.pop()
                continue
            children = nodes[-1].children
            node = children.get(part) if children is not None else None
            if node is None:
                return "/".join([*names, part, *parts]), None
            if node.kind == SYMLINK and (parts or follow_last):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise SymlinkLoop(f"/{path.lstrip('/')}: too many levels of symbolic links")
                target = node.link_target or ""
                if target.startswith("/"):
                    names, nodes = [], [self.root]
                parts.extendleft(reversed(target.split("/")))
                continue
            names.append(part)
            nodes.append(node)
        return "/".join(names), nodes[-1]

    def lookup(self, path: str, follow_last: bool = True) -> Entry | None:
        return self.resolve(path, follow_last)[1]

    def walk(self, top: str = "") -> Iterator[tuple[str, Entry]]:
        """Every entry below the canonical directory top, pre-order, children sorted by name."""
        start = self.lookup(top) if top else self.root
        if start is None or start.children is None:
            return
        stack: list[tuple[str, Entry]] = [
            (f"{top}/{name}" if top else name, child)
            for name, child in sorted(start.children.items(), reverse=True)
        ]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.kind == DIR and node.children:
                stack.extend(
                    (f"{path}/{name}", child) for name, child in sorted(node.children.items(), reverse=True)
                )

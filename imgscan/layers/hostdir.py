"""Index a plain rootfs directory on the host as a single layer, without following any of its symlinks."""

from __future__ import annotations

import os
import stat

from imgscan.errors import ImgscanError
from imgscan.layers import entry as kinds
from imgscan.layers.content import collect_content
from imgscan.layers.entry import Entry
from imgscan.layers.index import LayerIndex, LayerIndexBuilder, Limits

_KIND_OF_FMT = {
    stat.S_IFREG: kinds.FILE,
    stat.S_IFDIR: kinds.DIR,
    stat.S_IFLNK: kinds.SYMLINK,
    stat.S_IFCHR: kinds.CHAR,
    stat.S_IFBLK: kinds.BLOCK,
    stat.S_IFIFO: kinds.FIFO,
}


def _entry_of(st: os.stat_result, layer: int, link: str | None) -> Entry | None:
    kind = _KIND_OF_FMT.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        return None
    size = st.st_size if kind in (kinds.FILE, kinds.SYMLINK) else 0
    dev = st.st_rdev if kind in (kinds.CHAR, kinds.BLOCK) else 0
    return Entry(
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        size,
        int(st.st_mtime),
        layer,
        link,
        os.major(dev),
        os.minor(dev),
    )


def _collect(host_path: str, path: str, entry: Entry, builder: LayerIndexBuilder) -> None:
    try:
        with open(host_path, "rb", buffering=0) as f:  # lstat said regular file: no symlink is followed
            collect_content(path, entry, f.read)
    except OSError as e:
        builder.warn(f"unreadable files ({e.strerror})", path)


def index_hostdir(root: str, layer: int, limits: Limits) -> LayerIndex:
    """Walk root breadth-first with lstat; the second path of a multiply-linked file becomes a hardlink."""
    builder = LayerIndexBuilder(layer, limits, whiteouts=False)
    try:
        top = os.lstat(root)
    except OSError as e:
        raise ImgscanError(f"{root}: {e.strerror}") from None
    builder.add("", _entry_of(top, layer, None))  # type: ignore[arg-type]
    first_path_of_inode: dict[tuple[int, int], str] = {}
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir)) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as e:
            builder.warn(f"unreadable directories ({e.strerror})", rel_dir or "/")
            continue
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            st = child.stat(follow_symlinks=False)
            link = os.readlink(child.path) if child.is_symlink() else None
            entry = _entry_of(st, layer, link)
            if entry is None:
                builder.warn("skipped sockets and other special files", rel)
                continue
            if entry.kind == kinds.FILE and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in first_path_of_inode:
                    entry.kind, entry.link_target = kinds.HARDLINK, first_path_of_inode[key]
                else:
                    first_path_of_inode[key] = rel
            recorded = builder.add(rel, entry)
            if recorded is not None and entry.kind == kinds.FILE:
                _collect(child.path, recorded, entry, builder)
            if entry.kind == kinds.DIR:
                pending.append(rel)
    return builder.finish()

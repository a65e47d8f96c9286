"""Index one tar layer from a stream: verify its blob digest and diff_id, record every entry.

Python's tarfile parses headers; two of its habits are unsafe on hostile input and are closed here: it reads
a whole pax or GNU long-name header into memory (bounded by MAX_EXT_HEADER), and it keeps every member
it has seen (we drop them as we go, so memory holds only our compact entries).
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from imgscan.errors import ImgscanError
from imgscan.layers import entry as kinds
from imgscan.layers.entry import Entry
from imgscan.layers.index import LayerIndex, LayerIndexBuilder, Limits
from imgscan.layers.streams import DigestReader, InflateGuard, decompressed

MAX_EXT_HEADER = 1 << 20

_KIND_OF_TYPE = {
    tarfile.REGTYPE: kinds.FILE,
    tarfile.AREGTYPE: kinds.FILE,
    tarfile.CONTTYPE: kinds.FILE,
    tarfile.GNUTYPE_SPARSE: kinds.FILE,
    tarfile.DIRTYPE: kinds.DIR,
    tarfile.SYMTYPE: kinds.SYMLINK,
    tarfile.LNKTYPE: kinds.HARDLINK,
    tarfile.CHRTYPE: kinds.CHAR,
    tarfile.BLKTYPE: kinds.BLOCK,
    tarfile.FIFOTYPE: kinds.FIFO,
}
_EXT_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class BoundedTarInfo(tarfile.TarInfo):
    """Refuses extended headers (pax, GNU long names) larger than MAX_EXT_HEADER before reading them."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXT_HEADERS and self.size > MAX_EXT_HEADER:
            raise ImgscanError(f"tar extended header of {self.size} bytes (limit {MAX_EXT_HEADER})")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _entry_of(ti: tarfile.TarInfo, layer: int) -> Entry | None:
    kind = _KIND_OF_TYPE.get(ti.type)
    if kind is None:
        return None
    link = ti.linkname if kind in (kinds.SYMLINK, kinds.HARDLINK) else None
    size = ti.size if kind == kinds.FILE else len(ti.linkname.encode()) if kind == kinds.SYMLINK else 0
    return Entry(
        kind, ti.mode & 0o7777, ti.uid, ti.gid, size, int(ti.mtime), layer, link, ti.devmajor, ti.devminor
    )


def index_tar(
    raw: BinaryIO,
    layer: int,
    limits: Limits,
    digest: str | None,
    diff_id: str | None,
    label: str,
) -> LayerIndex:
    """Read raw (the stored blob, possibly compressed) once and return its LayerIndex.

    digest is the blob's expected digest, diff_id the uncompressed tar's; either may be None when the
    source has no claim (then nothing is checked for it). label names the layer in errors.
    """
    compressed = DigestReader(raw)
    stream, _ = decompressed(compressed)
    guard = InflateGuard(
        stream, compressed, limits.max_layer_bytes, limits.max_inflate_ratio, limits.inflate_ratio_floor
    )
    uncompressed = DigestReader(guard)
    builder = LayerIndexBuilder(layer, limits)
    try:
        _read_entries(uncompressed, builder, layer)
        uncompressed.drain()
        compressed.drain()
    except ImgscanError as e:
        raise ImgscanError(f"{label}: {e}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError) as e:
        raise ImgscanError(f"{label}: not a readable tar layer ({e})") from None
    if digest is not None and compressed.digest() != digest:
        raise ImgscanError(f"{label}: blob digest mismatch: expected {digest}, got {compressed.digest()}")
    if diff_id is not None and uncompressed.digest() != diff_id:
        raise ImgscanError(
            f"{label}: diff_id mismatch: config says {diff_id}, uncompressed layer is {uncompressed.digest()}"
        )
    index = builder.finish()
    index.diff_id = uncompressed.digest()
    index.uncompressed_size = uncompressed.count
    return index


def _read_entries(stream: BinaryIO, builder: LayerIndexBuilder, layer: int) -> None:
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo, errorlevel=2) as tf:
        while (ti := tf.next()) is not None:
            tf.members = []  # tarfile would otherwise keep every TarInfo of the layer
            entry = _entry_of(ti, layer)
            if entry is None:
                builder.warn(f"skipped tar entries of unsupported type {ti.type!r}", ti.name)
                continue
            builder.add(ti.name, entry)

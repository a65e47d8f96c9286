"""Index one tar layer from a stream: verify its blob digest and diff_id, record every entry."""

from __future__ import annotations

from typing import BinaryIO

from imgscan.errors import ImgscanError
from imgscan.layers import entry as kinds
from imgscan.layers import tarparse
from imgscan.layers.content import collect_content
from imgscan.layers.entry import Entry
from imgscan.layers.index import LayerIndex, LayerIndexBuilder, Limits
from imgscan.layers.streams import DigestReader, InflateGuard, decompressed

_KIND_OF_TYPE = {
    **dict.fromkeys(tarparse.FILE_TYPES, kinds.FILE),
    ord("S"): kinds.FILE,
    tarparse.DIR: kinds.DIR,
    tarparse.SYMLINK: kinds.SYMLINK,
    tarparse.HARDLINK: kinds.HARDLINK,
    tarparse.CHAR: kinds.CHAR,
    tarparse.BLOCKDEV: kinds.BLOCK,
    tarparse.FIFO: kinds.FIFO,
}


def _entry_of(m: tarparse.TarMember, layer: int) -> Entry | None:
    kind = _KIND_OF_TYPE.get(m.type)
    if kind is None:
        return None
    if kind == kinds.FILE:
        return Entry(kind, m.mode, m.uid, m.gid, m.size, m.mtime, layer)
    if kind in (kinds.SYMLINK, kinds.HARDLINK):
        size = len(m.linkname.encode("utf-8", "surrogateescape")) if kind == kinds.SYMLINK else 0
        return Entry(kind, m.mode, m.uid, m.gid, size, m.mtime, layer, m.linkname)
    return Entry(kind, m.mode, m.uid, m.gid, 0, m.mtime, layer, None, m.devmajor, m.devminor)


def _index_members(
    reader: tarparse.TarReader,
    builder: LayerIndexBuilder,
    layer: int,
    label: str,
    streams: list[DigestReader],
) -> None:
    """Every member into builder, then the streams read to their end (so their digests cover everything);
    a failure of the stream or of the tar names the layer."""
    try:
        for member in reader:
            entry = _entry_of(member, layer)
            if entry is None:
                builder.warn(f"skipped tar entries of unsupported type {chr(member.type)!r}", member.name)
                continue
            path = builder.add(member.name, entry)
            if path is not None:
                collect_content(path, entry, reader.read_data)
        if reader.missing_end_marker:
            builder.warn("tar stream ends without an end-of-archive marker (truncated?)", label)
        for stream in streams:
            stream.drain()
    except ImgscanError as e:
        raise ImgscanError(f"{label}: {e}") from None
    except OSError as e:
        raise ImgscanError(f"{label}: read error ({e})") from None


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
        _index_members(tarparse.TarReader(uncompressed), builder, layer, label, [uncompressed, compressed])
        blob, tar = compressed.digest(), uncompressed.digest()
        if digest is not None and blob != digest:
            raise ImgscanError(f"{label}: blob digest mismatch: expected {digest}, got {blob}")
        if diff_id is not None and tar != diff_id:
            raise ImgscanError(
                f"{label}: diff_id mismatch: config says {diff_id}, uncompressed layer is {tar}"
            )
    finally:
        uncompressed.close()
        compressed.close()
    index = builder.finish()
    index.diff_id = tar
    index.uncompressed_size = uncompressed.count
    return index

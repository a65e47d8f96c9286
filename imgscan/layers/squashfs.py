"""Squashfs 4.0, read in place: the root filesystem of a SIF, indexed and opened without extracting anything.

A small struct-based reader instead of a PyPI one (numbers in docs/sif.md): it lists faster, keeps a
bounded cache (the libraries keep up to 1024 decompressed data blocks, or the whole tree), opens files with
real seeks (ELF headers sit at both ends of a 500 MB library) and turns every malformed structure into
ImgscanError. Format: https://dr-emann.github.io/squashfs/ and the kernel's fs/squashfs.
"""

from __future__ import annotations

import io
import lzma
import stat
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import zstandard

from imgscan.errors import ImgscanError
from imgscan.layers.content import collect_content
from imgscan.layers.entry import BLOCK, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry
from imgscan.layers.index import LayerIndex, LayerIndexBuilder, Limits
from imgscan.sources.image import BlobRegion, SizedView

MAGIC = 0x73717368
_SUPER = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")
_INODE_HEADER = struct.Struct("<HHHHII")  # type, mode, uid index, gid index, mtime, inode number
_DIR_HEADER = struct.Struct("<III")  # count - 1, inode block, base inode number
_DIR_ENTRY = struct.Struct("<HhHH")  # offset in block, inode number delta, type, name length - 1
_FRAGMENT = struct.Struct("<QII")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
METADATA_SIZE = 8192
NO_FRAGMENT = 0xFFFFFFFF
NO_TABLE = 0xFFFFFFFFFFFFFFFF
_BLOCK_UNCOMPRESSED = 1 << 24
SOCKET = "socket"  # not an Entry kind: sockets are skipped
_COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
# inode types 1-7 (basic) and 8-14 (extended, +7): dir, file, symlink, block, char, fifo, socket
_KINDS = {1: DIR, 2: FILE, 3: SYMLINK, 4: BLOCK, 5: CHAR, 6: FIFO, 7: SOCKET}
MAX_LISTING = 128 << 20  # one directory's listing: a hostile size can't make us inflate gigabytes
MAX_BLOCKS = 1 << 24  # blocks of one file (2 TiB at 128 KiB)
_META_CACHE = 512  # 4 MiB of metadata blocks: a directory walk reads both tables front to back
_DATA_CACHE = 8  # decompressed data/fragment blocks: up to 8 MiB with 1 MiB blocks


class Inode:
    """What a walk needs of one inode.

    start/offset: a directory's listing (directory-table block, offset in it), or a file's first data
    block (absolute) and its tail's offset inside fragment `fragment`; blocklist: where a file's list
    of block sizes starts in the inode table (block << 16 | offset).
    """

    __slots__ = ("blocklist", "fragment", "gid", "kind", "mode", "mtime", "nlink", "number", "offset",
                 "rdev", "size", "start", "target", "uid")  # fmt: skip

    def __init__(self, number: int, kind: str, mode: int, mtime: int) -> None:
        self.number, self.kind, self.mode, self.mtime = number, kind, mode, mtime
        self.uid = self.gid = self.size = self.rdev = self.start = self.offset = self.blocklist = 0
        self.nlink = 1
        self.fragment = NO_FRAGMENT
        self.target: str | None = None

    def entry(self, layer: int) -> Entry:
        """The index's view; device numbers as the kernel's new_encode_dev() packs them."""
        major = (self.rdev >> 8) & 0xFFF
        minor = (self.rdev & 0xFF) | ((self.rdev >> 12) & 0xFFF00)
        size = 0 if self.kind == DIR else self.size
        return Entry(self.kind, self.mode, self.uid, self.gid, size, self.mtime, layer,
                     self.target, major, minor)  # fmt: skip


class Squashfs:
    """A squashfs image inside a BlobRegion (a SIF partition or a whole .sqfs file)."""

    def __init__(self, region: BlobRegion) -> None:
        self.name = region.path
        self._meta: OrderedDict[int, tuple[bytes, int]] = OrderedDict()
        self._data: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._f = region.open()
        self._end = region.size
        try:
            self._read_superblock()
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> Squashfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def _bad(self, what: str) -> ImgscanError:
        return ImgscanError(f"{self.name}: corrupt squashfs: {what}")

    def _read_superblock(self) -> None:
        raw = self._pread(0, _SUPER.size, "superblock")
        (magic, self.inode_count, _mkfs, self.block_size, self.fragment_count, comp, block_log, _flags,
         id_count, major, minor, self.root_ref, used, id_start, _xattr, self.inode_start, self.dir_start,
         frag_start, _export) = _SUPER.unpack(raw)  # fmt: skip
        if magic != MAGIC:
            raise ImgscanError(f"{self.name}: not a squashfs filesystem (bad magic)")
        if (major, minor) != (4, 0):
            raise ImgscanError(f"{self.name}: squashfs {major}.{minor} is not supported (only 4.0)")
        if not 4096 <= self.block_size <= 1 << 20 or self.block_size != 1 << block_log:
            raise self._bad(f"block size {self.block_size}")
        if used > self._end:
            raise self._bad(f"it claims {used} bytes but only {self._end} are there")
        self._end = used
        if not self.inode_start < self.dir_start <= used:
            raise self._bad("inode and directory tables out of order")
        self._decompress = self._decompressor(comp)
        self._ids = self._read_table(id_start, id_count, 4, "id table")
        self._frag_table = (
            self._read_table(frag_start, self.fragment_count, _FRAGMENT.size, "fragment table")
            if self.fragment_count and frag_start != NO_TABLE
            else b""
        )

    def _decompressor(self, comp: int) -> Callable[[bytes, int], bytes]:
        """A function inflating one block to at most `limit` bytes (a block can't be a bomb)."""
        name = _COMPRESSORS.get(comp, f"compressor id {comp}")
        if comp == 1:
            return lambda data, limit: zlib.decompressobj().decompress(data, limit)
        if comp in (2, 4):
            return lambda data, limit: lzma.LZMADecompressor().decompress(data, limit)
        if comp == 6:
            zd = zstandard.ZstdDecompressor()
            return lambda data, limit: zd.decompress(data, max_output_size=limit)
        raise ImgscanError(
            f"{self.name}: squashfs compressed with {name} is not supported (gzip, xz, lzma, zstd are); "
            "re-create it, e.g. `mksquashfs DIR out.sqfs -comp zstd`"
        )

    def _pread(self, pos: int, size: int, what: str) -> bytes:
        if pos < 0 or size < 0 or pos + size > self._end:
            raise self._bad(f"{what} at {pos}+{size} lies outside the filesystem ({self._end} bytes)")
        self._f.seek(pos)
        data = self._f.read(size)
        if len(data) != size:
            raise self._bad(f"{what} at {pos} is truncated")
        return data

    def _inflate(self, data: bytes, limit: int, what: str) -> bytes:
        try:
            return self._decompress(data, limit)
        except (zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
            raise self._bad(f"{what} does not decompress ({exc})") from None

    def _read_table(self, start: int, count: int, item: int, what: str) -> bytes:
        """A table kept in metadata blocks whose positions are listed at `start` (ids, fragments)."""
        nbytes = count * item
        nblocks = -(-nbytes // METADATA_SIZE)
        ptrs = struct.unpack(f"<{nblocks}Q", self._pread(start, 8 * nblocks, what))
        data = b"".join(self._meta_block(p)[0] for p in ptrs)
        if len(data) < nbytes:
            raise self._bad(f"{what} is short")
        return data[:nbytes]

    def _meta_block(self, pos: int) -> tuple[bytes, int]:
        """One metadata block at absolute position pos: (its bytes, position of the next block)."""
        hit = self._meta.get(pos)
        if hit is not None:
            self._meta.move_to_end(pos)
            return hit
        (header,) = _U16.unpack(self._pread(pos, 2, "metadata block header"))
        size = header & 0x7FFF
        if size == 0 or size > METADATA_SIZE + 64:
            raise self._bad(f"metadata block at {pos} has size {size}")
        raw = self._pread(pos + 2, size, "metadata block")
        data = raw if header & 0x8000 else self._inflate(raw, METADATA_SIZE, f"metadata block at {pos}")
        hit = (data, pos + 2 + size)
        self._meta[pos] = hit
        if len(self._meta) > _META_CACHE:
            self._meta.popitem(last=False)
        return hit

    def _meta_read(self, pos: int, offset: int, length: int) -> tuple[bytes, int, int]:
        """length bytes of a metadata stream from (block position, offset): (bytes, next pos, next offset).

        The next block is read only when needed: the last item of a table may end a block exactly.
        """
        data, nxt = self._meta_block(pos)
        if offset + length < len(data):  # the common case: inside one block
            return data[offset : offset + length], pos, offset + length
        parts = []
        while True:
            if offset > len(data):
                raise self._bad(f"offset {offset} past the metadata block at {pos}")
            take = data[offset : offset + length]
            parts.append(take)
            length -= len(take)
            offset += len(take)
            if offset == len(data):
                pos, offset = nxt, 0
            if length == 0:
                return b"".join(parts), pos, offset
            data, nxt = self._meta_block(pos)

    def inode(self, ref: int) -> Inode:
        """Parse the inode at a reference (block << 16 | offset, relative to the inode table)."""
        pos, off = self.inode_start + (ref >> 16), ref & 0xFFFF
        raw, pos, off = self._meta_read(pos, off, _INODE_HEADER.size)
        itype, mode, uid_i, gid_i, mtime, number = _INODE_HEADER.unpack(raw)
        kind = _KINDS.get(itype if itype <= 7 else itype - 7)
        if kind is None:
            raise self._bad(f"unknown inode type {itype}")
        ino = Inode(number, kind, stat.S_IMODE(mode), mtime)
        try:
            ino.uid = _U32.unpack_from(self._ids, 4 * uid_i)[0]
            ino.gid = _U32.unpack_from(self._ids, 4 * gid_i)[0]
        except struct.error:
            raise self._bad(f"inode {number} has an owner index outside the id table") from None
        if itype == 1:  # basic dir: listing block, nlink, size u16, offset, parent
            raw, _, _ = self._meta_read(pos, off, 16)
            ino.start, ino.nlink, ino.size, ino.offset, _p = struct.unpack("<IIHHI", raw)
        elif itype == 8:  # extended dir: nlink, size u32, listing block, parent, index count, offset, xattr
            raw, _, _ = self._meta_read(pos, off, 24)
            ino.nlink, ino.size, ino.start, _p, _n, ino.offset, _x = struct.unpack("<IIIIHHI", raw)
        elif itype == 2:  # basic file: first block, fragment, offset in fragment, size; then block sizes
            raw, pos, off = self._meta_read(pos, off, 16)
            ino.start, ino.fragment, ino.offset, ino.size = struct.unpack("<IIII", raw)
            ino.blocklist = (pos - self.inode_start) << 16 | off
        elif itype == 9:  # extended file: first block, size, sparse, nlink, fragment, offset, xattr
            raw, pos, off = self._meta_read(pos, off, 40)
            (ino.start, ino.size, _sparse, ino.nlink, ino.fragment, ino.offset,
             _x) = struct.unpack("<QQQIIII", raw)  # fmt: skip
            ino.blocklist = (pos - self.inode_start) << 16 | off
        elif kind == SYMLINK:
            raw, pos, off = self._meta_read(pos, off, 8)
            ino.nlink, ino.size = struct.unpack("<II", raw)
            if ino.size > 4096:
                raise self._bad(f"symlink inode {number} has a {ino.size}-byte target")
            raw, _, _ = self._meta_read(pos, off, ino.size)
            ino.target = raw.decode("utf-8", "surrogateescape")
        elif kind in (BLOCK, CHAR):
            raw, _, _ = self._meta_read(pos, off, 8)
            ino.nlink, ino.rdev = struct.unpack("<II", raw)
        else:
            raw, _, _ = self._meta_read(pos, off, 4)
            (ino.nlink,) = _U32.unpack(raw)
        return ino

    def listdir(self, inode: Inode) -> Iterator[tuple[str, int]]:
        """(name, inode reference) of each entry of a directory, in stored (sorted) order."""
        if inode.kind != DIR:
            raise ImgscanError(f"{self.name}: not a directory: inode {inode.number}")
        remaining = inode.size - 3  # the size counts '.' and '..', which are not stored
        if remaining <= 0:
            return
        if remaining > MAX_LISTING:
            raise self._bad(f"directory inode {inode.number} has a {remaining}-byte listing")
        raw, _, _ = self._meta_read(self.dir_start + inode.start, inode.offset, remaining)
        pos = 0
        while pos + _DIR_HEADER.size <= remaining:
            count, block, _base = _DIR_HEADER.unpack_from(raw, pos)
            pos += _DIR_HEADER.size
            if count >= 256:
                raise self._bad(f"directory header with {count + 1} entries")
            for _ in range(count + 1):
                if pos + _DIR_ENTRY.size > remaining:
                    raise self._bad(f"directory of inode {inode.number} is truncated")
                offset, _delta, _type, nlen = _DIR_ENTRY.unpack_from(raw, pos)
                pos += _DIR_ENTRY.size
                name = raw[pos : pos + nlen + 1]
                pos += nlen + 1
                yield name.decode("utf-8", "surrogateescape"), block << 16 | offset

    def walk(self) -> Iterator[tuple[str, Inode]]:
        """Every entry as (path, inode), the root as '' first, parents before their children.

        A directory inode reached twice (only a hostile image loops) is an ImgscanError. Names are checked
        here too: an entry named '', '.', '..' or holding '/' would otherwise alias another path.
        """
        root = self.inode(self.root_ref)
        if root.kind != DIR:
            raise self._bad("the root inode is not a directory")
        yield "", root
        seen = {self.root_ref}
        stack = [("", root)]
        while stack:
            prefix, directory = stack.pop()
            subdirs = []
            for name, ref in self.listdir(directory):
                if not name or name in (".", "..") or "/" in name:
                    raise self._bad(f"directory entry named {name!r} in {prefix or '/'}")
                ino = self.inode(ref)
                path = f"{prefix}/{name}" if prefix else name
                if ino.kind == DIR:
                    if ref in seen:
                        raise self._bad(f"directory loop at {path}")
                    seen.add(ref)
                    subdirs.append((path, ino))
                yield path, ino
            stack.extend(reversed(subdirs))

    def lookup(self, path: str) -> Inode:
        """The inode at an image path, without following symlinks (callers resolve those)."""
        ino = self.inode(self.root_ref)
        for part in filter(None, path.split("/")):
            ref = next((r for n, r in self.listdir(ino) if n == part), None) if ino.kind == DIR else None
            if ref is None:
                raise ImgscanError(f"{self.name}: no such file in the squashfs: {path}")
            ino = self.inode(ref)
        return ino

    def open(self, inode: Inode) -> BinaryIO:
        """A seekable reader over a regular file's bytes; only the blocks actually read are inflated."""
        if inode.kind != FILE:
            raise ImgscanError(f"{self.name}: not a regular file: inode {inode.number}")
        return io.BufferedReader(_FileReader(self, inode), buffer_size=64 << 10)

    def block_list(self, inode: Inode) -> tuple[list[int], list[int]]:
        """Sizes of a file's full blocks as stored, and each block's start in the image."""
        has_fragment = inode.fragment != NO_FRAGMENT
        nblocks = inode.size // self.block_size if has_fragment else -(-inode.size // self.block_size)
        if nblocks > MAX_BLOCKS:
            raise self._bad(f"file inode {inode.number} has {nblocks} blocks")
        ref = inode.blocklist
        raw, _, _ = self._meta_read(self.inode_start + (ref >> 16), ref & 0xFFFF, 4 * nblocks)
        sizes = list(struct.unpack(f"<{nblocks}I", raw))
        starts, pos = [], inode.start
        for size in sizes:
            starts.append(pos)
            pos += size & (_BLOCK_UNCOMPRESSED - 1)
        return sizes, starts

    def data_block(self, start: int, stored: int, length: int) -> bytes:
        """One data or fragment block (cached: fragments are shared by many small files)."""
        key = (start, stored)
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
            return hit
        size = stored & (_BLOCK_UNCOMPRESSED - 1)
        if size > self.block_size:
            raise self._bad(f"data block at {start} of {size} bytes")
        raw = self._pread(start, size, "data block")
        data = raw if stored & _BLOCK_UNCOMPRESSED else self._inflate(raw, self.block_size, "data block")
        if len(data) < length:
            raise self._bad(f"data block at {start} inflates to {len(data)} bytes, not {length}")
        self._data[key] = data
        if len(self._data) > _DATA_CACHE:
            self._data.popitem(last=False)
        return data

    def fragment(self, index: int) -> tuple[int, int]:
        """(start, stored size) of a fragment block."""
        if 16 * index + 16 > len(self._frag_table):
            raise self._bad(f"fragment {index} is outside the fragment table")
        start, stored, _ = _FRAGMENT.unpack_from(self._frag_table, 16 * index)
        return start, stored


class _FileReader(SizedView):
    """Random access to one file: block i lives at starts[i]; the tail may sit in a shared fragment."""

    def __init__(self, fs: Squashfs, inode: Inode) -> None:
        super().__init__(inode.size)
        self._fs = fs
        self._ino = inode
        self._sizes, self._starts = fs.block_list(inode)

    def readinto(self, buf: Any) -> int:
        size, bs = self._ino.size, self._fs.block_size
        if self._pos >= size:
            return 0
        index, within = divmod(self._pos, bs)
        length = min(bs, size - index * bs)
        if index < len(self._sizes):
            stored = self._sizes[index]
            block = (
                self._fs.data_block(self._starts[index], stored, length)
                if stored & (_BLOCK_UNCOMPRESSED - 1)
                else bytes(length)  # sparse
            )
            data = memoryview(block)[within:length]
        else:
            start, stored = self._fs.fragment(self._ino.fragment)
            offset = self._ino.offset
            frag = self._fs.data_block(start, stored, offset + length)
            data = memoryview(frag)[offset + within : offset + length]
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        self._pos += n
        return n


def index_squashfs(region: BlobRegion, layer: int, limits: Limits) -> LayerIndex:
    """Index a squashfs (one whole, squashed tree: no whiteouts) without extracting it.

    The 2nd and later paths of a file inode with nlink > 1 become hardlinks to the first path, as
    unsquashfs would create them; sockets are skipped (an image can't carry a live one).
    """
    builder = LayerIndexBuilder(layer, limits, whiteouts=False)
    first_path: dict[int, str] = {}  # inode number -> first recorded path, for files with nlink > 1
    with Squashfs(region) as fs:
        for path, ino in fs.walk():
            if ino.kind == SOCKET:
                builder.warn("skipped sockets", path)
                continue
            entry = ino.entry(layer)
            linked = ino.kind == FILE and ino.nlink > 1
            first = first_path.get(ino.number) if linked else None
            if first is not None:
                entry.kind, entry.link_target = HARDLINK, first
            recorded = builder.add(path, entry)
            if recorded is not None and entry.kind == FILE:
                with fs.open(ino) as f:
                    collect_content(recorded, entry, f.read)
            if linked and first is None and recorded is not None:
                first_path[ino.number] = path
    return builder.finish()

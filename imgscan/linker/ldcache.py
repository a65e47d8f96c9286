"""Parse the image's /etc/ld.so.cache (new format, old format, and the old+new compat layout).

ld.so consults the cache, never ld.so.conf. Layout (glibc sysdeps/generic/dl-cache.h):
new: 48-byte header 'glibc-ld.so.cache1.1', nlibs, len_strings, flags, pad, extension_offset, 3 unused;
entries of 24 bytes {flags i32, key u32, value u32, osversion u32, hwcap u64}; string offsets count from the
new header. old: 'ld.so-1.7.0', nlibs, entries of 12 bytes {flags, key, value}; strings follow the
entries and offsets count from there. compat: old table first, new header after it, 8-byte aligned.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from imgscan.errors import ImgscanError

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
EXTENSION_MAGIC = 0xEAA42174
EXTENSION_TAG_GLIBC_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62
MAX_ENTRIES = 1 << 20

FLAG_ELF_LIBC6 = 0x0003
# flags & 0xffff that a process of this e_machine (and ELF class) accepts (glibc _dl_cache_check_flags)
CACHE_FLAGS = {
    (62, 64): 0x0303,  # x86-64
    (3, 32): 0x0003,  # i386
    (183, 64): 0x0A03,  # aarch64
    (21, 64): 0x0503,  # ppc64
    (22, 64): 0x0403,  # s390x
}


@dataclass(frozen=True, slots=True)
class CacheEntry:
    soname: str
    path: str
    flags: int
    hwcaps_subdir: str | None  # e.g. 'x86-64-v3' for a glibc-hwcaps entry


def _cstring(data: bytes, offset: int) -> str:
    if not 0 <= offset < len(data):
        raise ImgscanError("string offset out of range")
    end = data.find(b"\0", offset)
    if end < 0:
        raise ImgscanError("unterminated string")
    return data[offset:end].decode("utf-8", "surrogateescape")


def _hwcaps_table(data: bytes, base: int, extension_offset: int) -> list[str]:
    """Subdirectory names of the glibc-hwcaps extension, indexed by an entry's hwcap low bits.

    The extension directory and its sections sit at file offsets; the strings they point to count from
    the new header, like every other string."""
    if not extension_offset:
        return []
    magic, count = struct.unpack_from("<II", data, extension_offset)
    if magic != EXTENSION_MAGIC:
        return []
    for i in range(min(count, 64)):
        tag, _flags, offset, size = struct.unpack_from("<IIII", data, extension_offset + 8 + 16 * i)
        if tag == EXTENSION_TAG_GLIBC_HWCAPS:
            return [
                _cstring(data, base + off)
                for (off,) in struct.iter_unpack("<I", data[offset : offset + size])
            ]
    return []


def _parse_new(data: bytes, base: int) -> list[CacheEntry]:
    nlibs, _len_strings, _flags, extension_offset = struct.unpack_from("<IIB3xI", data, base + 20)
    if nlibs > MAX_ENTRIES or base + 48 + 24 * nlibs > len(data):
        raise ImgscanError(f"{nlibs} entries do not fit the file")
    subdirs = _hwcaps_table(data, base, extension_offset)
    entries = []
    for flags, key, value, _osv, hwcap in struct.iter_unpack(
        "<iIIIQ", data[base + 48 : base + 48 + 24 * nlibs]
    ):
        subdir = None
        if hwcap & HWCAP_EXTENSION:
            index = hwcap & 0xFFFFFFFF
            subdir = subdirs[index] if index < len(subdirs) else f"?{index}"
        entries.append(CacheEntry(_cstring(data, base + key), _cstring(data, base + value), flags, subdir))
    return entries


def _parse_old(data: bytes) -> tuple[list[CacheEntry], int]:
    (nlibs,) = struct.unpack_from("<I", data, 12)
    strings = 16 + 12 * nlibs
    if nlibs > MAX_ENTRIES or strings > len(data):
        raise ImgscanError(f"{nlibs} entries do not fit the file")
    entries = [
        CacheEntry(_cstring(data, strings + key), _cstring(data, strings + value), flags, None)
        for flags, key, value in struct.iter_unpack("<iII", data[16:strings])
    ]
    return entries, strings


def parse_ld_so_cache(data: bytes) -> list[CacheEntry]:
    """All entries in file order (ldconfig sorts them: the first match wins). Raises ImgscanError."""
    try:
        if data.startswith(NEW_MAGIC):
            return _parse_new(data, 0)
        if data.startswith(OLD_MAGIC):
            old, old_end = _parse_old(data)
            new_at = (old_end + 7) & ~7  # compat layout: the new table follows, 8-byte aligned
            return _parse_new(data, new_at) if data[new_at : new_at + len(NEW_MAGIC)] == NEW_MAGIC else old
    except (struct.error, UnicodeError) as e:
        raise ImgscanError(f"corrupt ld.so.cache ({e})") from None
    raise ImgscanError("not an ld.so.cache (unknown magic)")

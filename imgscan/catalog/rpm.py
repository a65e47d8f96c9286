"""RPM packages from rpmdb.sqlite (rpm >= 4.16: Fedora 33+, RHEL/UBI 9, SUSE): header blobs parsed here.

The database is never written to disk: sqlite reads it from memory (Connection.deserialize). The older
Berkeley DB (Packages) and ndb (Packages.db) formats are detected and reported, not read. Versions and
purls follow syft 1.18: version [EPOCH:]VERSION-RELEASE, purl
pkg:rpm/ID/NAME@VERSION-RELEASE?arch=..&distro=..&epoch=..&upstream=SOURCERPM (rhel is 'redhat').
"""

from __future__ import annotations

import sqlite3
import struct
from dataclasses import dataclass, field

from imgscan.catalog.common import Context, distro_qualifier, purl
from imgscan.catalog.model import Package
from imgscan.layers.entry import DIR

DB_DIRS = ("var/lib/rpm", "usr/lib/sysimage/rpm", "usr/share/rpm")
MAX_PACKAGES = 1_000_000

TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH = 1000, 1001, 1002, 1003
TAG_LICENSE, TAG_ARCH, TAG_SOURCERPM, TAG_REQUIRENAME = 1014, 1022, 1044, 1049
TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES = 1116, 1117, 1118
_WANTED = {
    TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_LICENSE, TAG_ARCH, TAG_SOURCERPM,
    TAG_REQUIRENAME, TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES,
}  # fmt: skip
TYPE_INT32, TYPE_STRING, TYPE_STRING_ARRAY, TYPE_I18NSTRING = 4, 6, 8, 9
MAX_INDEX_ENTRIES = 1 << 16  # rpm's own limit (hdrchkTags)
MAX_DATA = 256 << 20  # rpm's hdrchkData


class HeaderError(ValueError):
    """A header blob whose structure does not hold together."""


@dataclass
class Header:
    strings: dict[int, str] = field(default_factory=dict)
    arrays: dict[int, list[str]] = field(default_factory=dict)
    ints: dict[int, list[int]] = field(default_factory=dict)


def parse_header(blob: bytes) -> Header:
    """The tags imgscan needs from an rpm header blob (as rpmdb.sqlite stores it: no leading magic):
    il and dl (big-endian counts), il index entries (tag, type, offset, count), then dl bytes of data."""
    if len(blob) < 8:
        raise HeaderError("shorter than its own counts")
    il, dl = struct.unpack_from(">II", blob)
    if il > MAX_INDEX_ENTRIES or dl > MAX_DATA or 8 + 16 * il + dl > len(blob):
        raise HeaderError(f"counts out of bounds (il={il}, dl={dl}, {len(blob)} bytes)")
    store = blob[8 + 16 * il : 8 + 16 * il + dl]
    header = Header()
    for i in range(il):
        tag, kind, offset, count = struct.unpack_from(">iIiI", blob, 8 + 16 * i)
        if tag not in _WANTED:
            continue
        if offset < 0 or offset >= dl or count > dl:
            raise HeaderError(f"tag {tag}: data out of bounds")
        if kind in (TYPE_STRING, TYPE_I18NSTRING):
            header.strings[tag] = _strings(store, offset, 1)[0]
        elif kind == TYPE_STRING_ARRAY:
            header.arrays[tag] = _strings(store, offset, count)
        elif kind == TYPE_INT32:
            if offset + 4 * count > dl:
                raise HeaderError(f"tag {tag}: int32 array out of bounds")
            header.ints[tag] = list(struct.unpack_from(f">{count}i", store, offset))
    return header


def _strings(store: bytes, offset: int, count: int) -> list[str]:
    out = []
    for _ in range(count):
        end = store.find(b"\0", offset)
        if end < 0:
            raise HeaderError("unterminated string")
        out.append(store[offset:end].decode("utf-8", "replace"))
        offset = end + 1
    return out


def header_files(header: Header) -> list[str]:
    """BASENAMES joined to DIRNAMES[DIRINDEXES[i]] (rpm's compressed file list)."""
    bases = header.arrays.get(TAG_BASENAMES, [])
    dirs = header.arrays.get(TAG_DIRNAMES, [])
    indexes = header.ints.get(TAG_DIRINDEXES, [])
    if len(indexes) != len(bases) or any(not 0 <= i < len(dirs) for i in indexes):
        raise HeaderError("file list indexes do not match")
    return [dirs[i] + base for i, base in zip(indexes, bases, strict=True)]


def read_sqlite(data: bytes) -> list[tuple[int, bytes]]:
    """(hnum, blob) rows of the Packages table, read from memory. A WAL-mode file is flipped to rollback
    mode first: an in-memory database cannot open a WAL (the -wal file itself is never read)."""
    if len(data) >= 20 and data[:16] == b"SQLite format 3\0" and data[18:20] == b"\x02\x02":
        data = data[:18] + b"\x01\x01" + data[20:]
    con = sqlite3.connect(":memory:")
    try:
        con.deserialize(data)
        rows = con.execute("SELECT hnum, blob FROM Packages LIMIT ?", (MAX_PACKAGES,)).fetchall()
    finally:
        con.close()
    return [(hnum, bytes(blob)) for hnum, blob in rows if isinstance(blob, bytes | memoryview)]


class _RpmReader:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        os = ctx.os
        namespace = os.id if os is not None else ""
        if namespace == "rhel":
            namespace = "redhat"
        elif namespace.startswith("opensuse"):
            namespace = "opensuse"
        self.namespace = namespace
        self.distro = distro_qualifier(os)

    def packages(self, location: str, layer: int, data: bytes) -> list[Package]:
        try:
            rows = read_sqlite(data)
        except (sqlite3.Error, OverflowError) as e:  # OverflowError: over sqlite's size limit
            self.ctx.warnings.add("rpm: unreadable rpmdb.sqlite", f"/{location}: {e}")
            return []
        out = []
        for hnum, blob in rows:
            try:
                header = parse_header(blob)
                files = header_files(header)
            except (HeaderError, struct.error) as e:
                self.ctx.warnings.add("rpm: corrupt package header", f"/{location} #{hnum}: {e}")
                continue
            package = self._package(header, files, location, layer)
            if package is None:
                self.ctx.warnings.add("rpm: package header without name or version", f"/{location} #{hnum}")
            else:
                out.append(package)
        return out

    def _package(self, header: Header, files: list[str], location: str, layer: int) -> Package | None:
        name, version = header.strings.get(TAG_NAME, ""), header.strings.get(TAG_VERSION, "")
        if not name or not version:
            return None
        release, arch = header.strings.get(TAG_RELEASE, ""), header.strings.get(TAG_ARCH, "")
        epoch = header.ints.get(TAG_EPOCH, [])[:1]
        source = header.strings.get(TAG_SOURCERPM, "")
        evr = f"{version}-{release}"
        license = header.strings.get(TAG_LICENSE, "")
        properties = {k: v for k, v in (("arch", arch), ("release", release), ("sourcerpm", source)) if v}
        if epoch:
            properties["epoch"] = str(epoch[0])
        qualifiers = {
            "arch": arch,
            "distro": self.distro,
            "upstream": source,
            "epoch": properties.get("epoch", ""),
        }
        return Package(
            name=name,
            version=f"{epoch[0]}:{evr}" if epoch else evr,
            ecosystem="rpm",
            purl=purl("rpm", self.namespace, name, evr, qualifiers),
            location="/" + location,
            layer=layer,
            licenses=[license] if license else [],
            files=self.ctx.owned_files(files),
            depends=[
                r
                for r in dict.fromkeys(header.arrays.get(TAG_REQUIRENAME, []))
                if not r.startswith("rpmlib(")
            ],
            properties=properties,
        )


def catalog_rpm(ctx: Context) -> list[Package]:
    """The rpmdb.sqlite of each usual database directory, each read once (/var/lib/rpm is often a symlink
    to /usr/lib/sysimage/rpm); a Berkeley DB or ndb database gives a warning."""
    reader = _RpmReader(ctx)
    packages: list[Package] = []
    seen: set[str] = set()
    for directory in DB_DIRS:
        canonical, entry = ctx.resolve(directory)
        if entry is None or entry.kind != DIR or canonical in seen:
            continue
        seen.add(canonical)
        sqlite_path = f"{canonical}/rpmdb.sqlite"
        data, db = ctx.read(sqlite_path, "rpm database")
        if data is not None and db is not None:
            packages += reader.packages(sqlite_path, db.layer, data)
        wal = ctx.lookup(f"{sqlite_path}-wal")
        if wal is not None and wal.size > 0:
            ctx.warnings.add(
                "rpm: rpmdb.sqlite-wal not merged into the database (not read)", f"/{sqlite_path}-wal"
            )
        if db is not None:
            continue
        for old, kind in (("Packages", "Berkeley DB"), ("Packages.db", "ndb")):
            old_entry = ctx.lookup(f"{canonical}/{old}")
            if old_entry is not None and old_entry.kind != DIR:
                ctx.warnings.add(
                    f"rpm: {kind} database not read (only rpmdb.sqlite is)", f"/{canonical}/{old}"
                )
    return packages

"""Hand-made OCI layouts for hostile input no real tool would write.

OciWriter writes a valid layout (oci-layout, index.json, blobs named by their sha256, a config whose
rootfs.diff_ids are right) around layer tars crafted here, so that each test breaks exactly one thing.
Big layers are streamed: neither the tar nor its compressed form is ever held in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPES = {"none": OCI_LAYER, "gzip": OCI_LAYER + "+gzip", "zstd": OCI_LAYER + "+zstd"}
MTIME = 1_700_000_000


@dataclass
class Member:
    """One tar entry. `size` overrides the header's size (a lie) without changing the data written;
    `pax` adds pax records (they win over the ustar fields)."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)
    size: int | None = None
    format: int = tarfile.PAX_FORMAT  # GNU_FORMAT writes long names as ././@LongLink entries


def file(name: str, data: bytes | str = b"", mode: int = 0o644) -> Member:
    return Member(name, data=data.encode() if isinstance(data, str) else data, mode=mode)


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Member:
    return Member(name, tarfile.LNKTYPE, linkname=target)


def device(name: str, kind: bytes, major: int, minor: int, mode: int = 0o660) -> Member:
    return Member(name, kind, mode=mode, devmajor=major, devminor=minor)


def member_bytes(m: Member) -> bytes:
    """Header(s) plus padded data of one entry, written as given (no name cleaning, no checks)."""
    info = tarfile.TarInfo(m.name)
    info.type, info.mode, info.linkname = m.kind, m.mode, m.linkname
    info.uid, info.gid, info.mtime = m.uid, m.gid, MTIME
    info.devmajor, info.devminor = m.devmajor, m.devminor
    info.size = len(m.data) if m.size is None else m.size
    info.pax_headers = dict(m.pax)
    header = info.tobuf(m.format, "utf-8", "surrogateescape")
    pad = (-len(m.data)) % tarfile.BLOCKSIZE
    return header + m.data + b"\0" * pad


def tar_bytes(members: Iterable[Member], end: bool = True) -> bytes:
    """A whole tar archive of `members` (with the two zero blocks that end it unless end=False)."""
    out = b"".join(member_bytes(m) for m in members)
    return out + (b"\0" * (2 * tarfile.BLOCKSIZE) if end else b"")


# --------------------------------------------------------------------------------------------------------
# streamed layers


class _HeaderTemplate:
    """Fast ustar headers that differ only in a fixed-length name: the checksum is patched, not recomputed."""

    def __init__(self, name_len: int, kind: bytes, mode: int) -> None:
        info = tarfile.TarInfo("x" * name_len)
        info.type, info.mode, info.mtime = kind, mode, MTIME
        self.header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
        self.header[148:156] = b"        "
        self.base = sum(self.header) - sum(self.header[:name_len])
        self.name_len = name_len

    def make(self, name: bytes) -> bytes:
        assert len(name) == self.name_len
        self.header[: self.name_len] = name
        self.header[148:156] = b"%06o\0 " % (self.base + sum(name))
        return bytes(self.header)


def many_files_tar(n_files: int, per_dir: int = 1000) -> Iterator[bytes]:
    """A tar of n_files empty files, per_dir to a directory, as a stream of chunks (about 1 MB each)."""
    n_dirs = (n_files + per_dir - 1) // per_dir
    dir_tpl = _HeaderTemplate(len(b"d00000/"), tarfile.DIRTYPE, 0o755)
    file_tpl = _HeaderTemplate(len(b"d00000/f00000000"), tarfile.REGTYPE, 0o644)
    buf: list[bytes] = []
    for d in range(n_dirs):
        buf.append(dir_tpl.make(b"d%05d/" % d))
        for i in range(d * per_dir, min(n_files, (d + 1) * per_dir)):
            buf.append(file_tpl.make(b"d%05d/f%08d" % (d, i)))
        if len(buf) >= 2048:
            yield b"".join(buf)
            buf = []
    buf.append(b"\0" * (2 * tarfile.BLOCKSIZE))
    yield b"".join(buf)


def zeros_file_tar(name: str, size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A tar holding one regular file of `size` zero bytes, streamed."""
    yield member_bytes(Member(name, size=size))  # header only: data follows
    zero = b"\0" * chunk
    left = size
    while left >= chunk:
        yield zero
        left -= chunk
    yield b"\0" * left + b"\0" * ((-size) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


def gzip_bomb_zeros(name: str, size: int) -> tuple[Iterator[bytes], str]:
    """A gzip layer (stream of chunks) whose tar holds `size` zero bytes, about size/1000 compressed, made
    fast: every 1 MiB of zeros is deflated once after a full flush and its bytes repeated. Returns the chunks
    and the diff_id (sha256 of the uncompressed tar)."""
    chunk = 1 << 20
    assert size % chunk == 0, "size must be a multiple of 1 MiB"
    header = member_bytes(Member(name, size=size))
    tail = b"\0" * (2 * tarfile.BLOCKSIZE)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\0" * chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(b"\0" * chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    assert block == again
    last = comp.compress(tail) + comp.flush(zlib.Z_FINISH)
    sha, crc, zero = hashlib.sha256(header), zlib.crc32(header), b"\0" * chunk
    for _ in range(size // chunk):
        sha.update(zero)
        crc = zlib.crc32(zero, crc)
    sha.update(tail)
    crc = zlib.crc32(tail, crc)
    total = len(header) + size + len(tail)

    def chunks() -> Iterator[bytes]:
        yield b"\x1f\x8b\x08\x00\0\0\0\0\x02\x03" + first
        for _ in range(size // chunk - 1):
            yield block
        yield block + last + crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little")

    return chunks(), "sha256:" + sha.hexdigest()


def compress_stream(chunks: Iterable[bytes], compression: str) -> Iterator[bytes]:
    """Compress a stream of chunks with gzip (level 1), zstd, or not at all."""
    if compression == "none":
        yield from chunks
    elif compression == "gzip":
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)
        for c in chunks:
            out = comp.compress(c)
            if out:
                yield out
        yield comp.flush()
    elif compression == "zstd":
        comp = zstandard.ZstdCompressor(level=1).compressobj()
        for c in chunks:
            out = comp.compress(c)
            if out:
                yield out
        yield comp.flush()
    else:
        raise ValueError(compression)


# --------------------------------------------------------------------------------------------------------
# the layout


@dataclass
class Layer:
    """A layer as a manifest and a config see it."""

    digest: str
    size: int
    diff_id: str
    media_type: str

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OciWriter:
    """Writes an OCI image layout under `root`; every blob is named by its real sha256 unless a test
    breaks it afterwards (see corrupt_blob, rename_blob)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.manifests: list[dict] = []

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blob_path(digest).write_bytes(data)
        return digest

    def add_blob_stream(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Write a blob from a stream, hashing as it goes; returns (digest, size)."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".partial-")
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                h.update(c)
                size += len(c)
                f.write(c)
        digest = "sha256:" + h.hexdigest()
        os.replace(tmp, self.blob_path(digest))
        return digest, size

    def add_layer(self, tar: bytes, compression: str = "gzip") -> Layer:
        """A layer from tar bytes (see tar_bytes)."""
        if compression == "gzip":
            blob = gzip.compress(tar, mtime=0)
        elif compression == "zstd":
            blob = zstandard.ZstdCompressor().compress(tar)
        else:
            blob = tar
        return Layer(self.add_blob(blob), len(blob), sha256(tar), MEDIA_TYPES[compression])

    def add_layer_stream(self, tar_chunks: Iterable[bytes], compression: str = "gzip") -> Layer:
        """A layer from a stream of uncompressed tar chunks: diff_id and digest computed on the fly."""
        diff = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for c in tar_chunks:
                diff.update(c)
                yield c

        digest, size = self.add_blob_stream(compress_stream(hashed(), compression))
        return Layer(digest, size, "sha256:" + diff.hexdigest(), MEDIA_TYPES[compression])

    def add_precompressed_layer(self, blob_chunks: Iterable[bytes], diff_id: str, compression: str) -> Layer:
        """A layer whose compressed bytes are given (a bomb, a truncated stream) with the diff_id to claim."""
        digest, size = self.add_blob_stream(blob_chunks)
        return Layer(digest, size, diff_id, MEDIA_TYPES[compression])

    def config_for(self, layers: list[Layer], **extra: object) -> dict:
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": f"craft layer {i}"} for i in range(len(layers))],
        }
        config.update(extra)
        return config

    def add_image(self, layers: list[Layer], tag: str | None = "latest", config: dict | None = None) -> str:
        """Config + manifest blobs and an index entry; returns the manifest digest. Call write_index after."""
        config_data = json.dumps(config or self.config_for(layers), sort_keys=True).encode()
        config_digest = self.add_blob(config_data)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_data)},
            "layers": [layer.descriptor() for layer in layers],
        }
        manifest_data = json.dumps(manifest, sort_keys=True).encode()
        digest = self.add_blob(manifest_data)
        entry: dict = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest_data)}
        if tag is not None:
            entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(entry)
        return digest

    def write_index(self) -> Path:
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.manifests,
        }
        (self.root / "index.json").write_text(json.dumps(index, indent=1))
        return self.root

    def corrupt_blob(self, digest: str, offset: int = -1) -> None:
        """Flip one byte of a stored blob, keeping its name (a digest mismatch)."""
        path = self.blob_path(digest)
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))


def single_layer_layout(
    root: Path, members: Iterable[Member], compression: str = "gzip", tag: str | None = "latest"
) -> Path:
    """The common case: one image, one layer made of `members`."""
    writer = OciWriter(root)
    writer.add_image([writer.add_layer(tar_bytes(members), compression)], tag)
    return writer.write_index()


def tar_of_dir(src: Path, dest: Path, extra: Iterable[Member] = ()) -> Path:
    """An archive of a directory (an oci-archive), plus extra crafted members appended."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
        for m in extra:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.linkname, info.size = m.kind, m.mode, m.linkname, len(m.data)
            tar.addfile(info, io.BytesIO(m.data) if m.kind == tarfile.REGTYPE else None)
    return dest

"""The Image model every source produces: manifest facts, config, and layers that open as byte regions."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from imgscan.errors import ImgscanError

if TYPE_CHECKING:
    from imgscan.layers.index import LayerIndex

TAR = "tar"
SQUASHFS = "squashfs"
HOSTDIR = "dir"


@dataclass(frozen=True)
class BlobRegion:
    """Bytes of one blob inside a host file: a whole blob file, or a member of an uncompressed archive or
    a SIF partition. Plain data, so a worker process can reopen it."""

    path: str
    offset: int
    size: int

    def open(self) -> BinaryIO:
        """A read-only stream over exactly this region; reading past it returns b''."""
        f = open(self.path, "rb")  # noqa: SIM115 - ownership passes to the region reader
        return RegionReader(f, self.offset, self.size)


class SizedView(io.RawIOBase):
    """A read-only, seekable stream of known size; subclasses supply readinto from self._pos."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos


class RegionReader(SizedView):
    """A bounded, seekable view of part of a file (no copy, no extraction)."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        super().__init__(size)
        self._f = f
        self._start = offset
        f.seek(offset)

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buf)[:n])
        if not got:
            raise ImgscanError(f"{self._f.name}: file ends before the blob at offset {self._start} does")
        self._pos += got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


class BlobLocation(Protocol):
    """Any picklable place a blob can be streamed from (a registry blob: sources.registry.RemoteBlob)."""

    size: int

    def open(self) -> BinaryIO: ...


@dataclass
class LayerRef:
    """One layer as its source describes it. format is TAR, SQUASHFS or HOSTDIR.

    digest: sha256 of the stored blob (compressed bytes), checked while the layer is read.
    diff_id: sha256 of the uncompressed tar, from the config's rootfs.diff_ids, checked too.
    indexed: the layer already indexed by a source that had to read it to find it (a streamed
    docker save), already verified; it is used once, by the scan, which has nothing left to read.
    """

    index: int
    format: str
    media_type: str
    digest: str | None = None
    diff_id: str | None = None
    size: int | None = None
    region: BlobRegion | BlobLocation | None = None  # squashfs layers: a BlobRegion
    host_dir: str | None = None
    indexed: LayerIndex | None = None


@dataclass
class Image:
    """What a source resolved: which image, its config (OCI image config layout), and its layers.

    digest: the manifest digest for OCI images, the image ID (config digest) for docker-archives, the file's
    sha256 for SIF, None for a host directory. metadata holds source-specific facts (SIF labels, deffile).
    """

    reference: str
    transport: str
    digest: str | None
    platform: str
    config: dict[str, Any]
    layers: list[LayerRef]
    manifest_media_type: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def container_config(self) -> dict[str, Any]:
        """The runtime part of the config: Env, Entrypoint, Cmd, WorkingDir, Labels."""
        return self.config.get("config") or {}

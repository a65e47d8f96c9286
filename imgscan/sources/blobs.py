"""Reading a layout's files from a host directory or from inside an uncompressed tar, as byte regions.

OCI layouts come as directories or tars (oci-archive); docker-archives are tars. Both give regions of host
files, so no member is ever extracted, and a worker process can reopen any blob on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

from imgscan.errors import ImgscanError
from imgscan.layers.names import clean_path
from imgscan.layers.streams import GZIP_MAGIC, ZSTD_MAGIC
from imgscan.layers.tarparse import FILE_TYPES, HARDLINK, SYMLINK, TarMember, TarReader
from imgscan.sources.image import BlobRegion

MAX_JSON_BYTES = 16 << 20
_MAX_MEMBER_LINKS = 16


class LayoutFiles(Protocol):
    """Named files of a layout or archive; names are '/'-separated relative paths."""

    description: str

    def region(self, name: str) -> BlobRegion | None: ...


class DirFiles:
    """Files of a layout directory. Names are cleaned and must stay inside the directory."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.description = root

    def region(self, name: str) -> BlobRegion | None:
        rel = clean_path(name)
        if not rel:
            return None
        path = os.path.realpath(os.path.join(self.root, rel))
        if not path.startswith(self.root + os.sep) or not os.path.isfile(path):
            return None
        return BlobRegion(path, 0, os.path.getsize(path))


class TarFiles:
    """Members of an uncompressed tar, located by offset; symlinked and hardlinked members are followed
    (docker save writes layer.tar as a symlink to another layer's)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = path
        self._members: dict[str, TarMember] = {}
        self._offsets: dict[str, int] = {}
        try:
            with open(path, "rb", buffering=0) as f:
                if f.read(4).startswith((GZIP_MAGIC, ZSTD_MAGIC)):
                    raise ImgscanError(f"{path}: compressed archive; decompress it first (gzip -d / zstd -d)")
                f.seek(0)
                reader = TarReader(f)
                for member in reader:
                    name = clean_path(member.name)
                    if name:
                        self._members[name] = member
                        self._offsets[name] = reader.data_offset
        except ImgscanError as e:
            raise ImgscanError(f"{path}: not a readable tar archive ({e})") from None
        except OSError as e:
            raise ImgscanError(f"{path}: {e.strerror or e}") from None

    def names(self) -> set[str]:
        return set(self._members)

    def region(self, name: str) -> BlobRegion | None:
        target = follow_links(self._members, name)
        if target is None:
            return None
        return BlobRegion(self.path, self._offsets[target], self._members[target].size)


def follow_links(members: Mapping[str, TarMember], name: str) -> str | None:
    """The regular member that name ends at in an archive, following symlinks (relative to the link's
    directory) and hardlinks (relative to the archive root); None for a missing member or a loop."""
    for _ in range(_MAX_MEMBER_LINKS):
        name = clean_path(name) or ""
        member = members.get(name)
        if member is None:
            return None
        if member.type in FILE_TYPES:
            return name
        if member.type == SYMLINK:
            base = os.path.dirname(name)
            name = member.linkname if member.linkname.startswith("/") else f"{base}/{member.linkname}"
        elif member.type == HARDLINK:
            name = member.linkname
        else:
            return None
    return None


def read_blob(files: LayoutFiles, name: str, digest: str | None = None, limit: int = MAX_JSON_BYTES) -> bytes:
    """A small file (manifest, config, index) read whole, after checking its size and digest."""
    region = files.region(name)
    if region is None:
        raise ImgscanError(f"{files.description}: {name} is missing")
    if region.size > limit:
        raise ImgscanError(f"{files.description}: {name} is {region.size} bytes (limit {limit})")
    with region.open() as f:
        data = f.read()
    if digest is not None:
        algo, _, want = digest.partition(":")
        if algo != "sha256":
            raise ImgscanError(f"{files.description}: unsupported digest algorithm in {digest}")
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise ImgscanError(
                f"{files.description}: {name} digest mismatch: expected {digest}, got sha256:{got}"
            )
    return data


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ImgscanError(f"{what}: invalid JSON ({e})") from None


def blob_name(digest: str) -> str:
    """blobs/<algo>/<hex> for a digest, refusing anything that is not a plain sha256 digest."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ImgscanError(f"invalid digest {digest!r}")
    return f"blobs/sha256/{hexpart}"

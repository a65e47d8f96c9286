"""Image references, syft-compatible: 'TRANSPORT:LOCATION[:TAG|@sha256:...]' or a bare path to sniff."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from imgscan.errors import ImgscanError
from imgscan.layers.index import Limits
from imgscan.sources.blobs import DirFiles, TarFiles
from imgscan.sources.docker_archive import read_docker_archive
from imgscan.sources.image import HOSTDIR, Image, LayerRef
from imgscan.sources.oci import read_oci_layout
from imgscan.sources.registry import open_registry
from imgscan.sources.sif import open_sif

SIF_MAGIC_OFFSET = 32
SIF_MAGIC = b"SIF_MAGIC"
TRANSPORTS = {
    "oci-dir": "oci-dir",
    "oci": "oci-dir",
    "oci-archive": "oci-archive",
    "docker-archive": "docker-archive",
    "singularity": "singularity",
    "sif": "singularity",
    "dir": "dir",
    "registry": "registry",
}
DEFAULT_PLATFORM = "linux/amd64"


@dataclass(frozen=True)
class SourceOptions:
    """How to open a reference: the platform to pick from an index, plain http for registry: sources, and
    the limits for a source that indexes its layers while it reads them (docker:)."""

    platform: str = DEFAULT_PLATFORM
    insecure: bool = False
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Reference:
    transport: str
    path: str
    selector: str | None  # tag, REPO:TAG, or sha256:... digest


def _split_location(rest: str) -> tuple[str, str | None]:
    """'PATH', 'PATH:TAG', 'PATH:REPO:TAG' or 'PATH@sha256:...': the path is the longest prefix that exists
    (so paths with ':' and registry ports in REPO both work)."""
    if "@sha256:" in rest:
        path, _, digest = rest.rpartition("@")
        return path, digest
    if os.path.exists(rest):
        return rest, None
    for i, ch in enumerate(rest):
        if ch == ":" and os.path.exists(rest[:i]):
            return rest[:i], rest[i + 1 :] or None
    return rest, None


def parse_reference(text: str) -> Reference:
    scheme, sep, rest = text.partition(":")
    if scheme == "registry" and sep:
        return Reference("registry", rest, None)  # HOST[:PORT]/REPO[:TAG|@digest], parsed by sources.registry
    if scheme == "docker" and sep:
        return Reference("docker", rest, None)  # NAME[:TAG|@digest] or an image ID, the daemon resolves it
    if sep and scheme in TRANSPORTS and not os.path.exists(text):
        path, selector = _split_location(rest)
        return Reference(TRANSPORTS[scheme], path, selector)
    path, selector = _split_location(text)
    return Reference(_sniff(path), path, selector)


def _sniff(path: str) -> str:
    """Which kind of input a bare path is: OCI layout dir, plain dir, SIF, or a tar of either layout."""
    if os.path.isdir(path):
        has_layout = os.path.exists(os.path.join(path, "oci-layout"))
        return "oci-dir" if has_layout else "dir"
    try:
        with open(path, "rb") as f:
            head = f.read(SIF_MAGIC_OFFSET + len(SIF_MAGIC))
    except OSError as e:
        raise ImgscanError(f"{path}: {e.strerror or e}") from None
    if head[SIF_MAGIC_OFFSET:] == SIF_MAGIC:
        return "singularity"
    names = TarFiles(path).names()
    if "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise ImgscanError(f"{path}: not an OCI layout, docker-archive, SIF or directory")


def _host_dir_image(path: str) -> Image:
    config = {
        "os": "linux",
        "architecture": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    layer = LayerRef(index=0, format=HOSTDIR, media_type="inode/directory", host_dir=path)
    return Image(
        reference=f"dir:{os.path.abspath(path)}",
        transport="dir",
        digest=None,
        platform="linux/unknown",
        config=config,
        layers=[layer],
    )


def open_image(text: str, options: SourceOptions | None = None) -> Image:
    """Resolve a reference to an Image whose manifest and config have been verified."""
    ref = parse_reference(text)
    try:
        return _open(ref, options or SourceOptions())
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        # JSON of the wrong shape (a list where an object belongs, a number for a digest...)
        raise ImgscanError(f"{ref.path}: malformed image metadata ({type(e).__name__}: {e})") from None


def _open(ref: Reference, options: SourceOptions) -> Image:
    """registry: and docker: go over the network or a socket; every other transport reads a local
    directory (oci-dir, dir) or file (the rest)."""
    platform = options.platform
    if ref.transport == "registry":
        return open_registry(ref.path, platform, options.insecure)
    if ref.transport == "docker":
        from imgscan.sources.docker_daemon import open_docker  # the SDK takes 0.25 s to import

        return open_docker(ref.path, options.limits)
    location = os.path.abspath(ref.path)
    if ref.transport in ("oci-dir", "dir"):
        if not os.path.isdir(ref.path):
            raise ImgscanError(f"{ref.path}: no such directory")
    elif not os.path.isfile(ref.path):
        raise ImgscanError(f"{ref.path}: no such file")
    if ref.transport == "oci-dir":
        return read_oci_layout(DirFiles(ref.path), ref.selector, platform, "oci-dir", location)
    if ref.transport == "oci-archive":
        return read_oci_layout(TarFiles(ref.path), ref.selector, platform, "oci-archive", location)
    if ref.transport == "docker-archive":
        return read_docker_archive(TarFiles(ref.path), ref.selector, location)
    if ref.transport == "singularity":
        return open_sif(ref.path, f"singularity:{location}")
    return _host_dir_image(ref.path)

"""Images pulled through the OCI distribution API: 'registry:HOST[:PORT]/REPO[:TAG|@sha256:...]'.

Manifests and configs are fetched whole and verified by digest; layers become RemoteBlob locations that a
worker process opens as a stream (nothing is stored on disk), checked by the layer pipeline's blob digest
and diff_id.
https with verified TLS by default (SSL_CERT_FILE names a private CA); insecure (--insecure) uses plain
http. The HTTP side (auth, retries, Range resume) is sources.registry_client; credentials are
sources.credentials.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from imgscan.errors import ImgscanError
from imgscan.sources.blobs import blob_name, parse_json
from imgscan.sources.credentials import DOCKER_HUB_HOSTS
from imgscan.sources.image import TAR, Image, LayerRef
from imgscan.sources.oci import INDEX_TYPES, MANIFEST_TYPES, _pick_platform, diff_ids_of, format_platform
from imgscan.sources.registry_client import RegistryClient, RemoteBlob

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
_MAX_INDEX_DEPTH = 4
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RegistryRef:
    host: str
    repo: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}"


def parse_registry_ref(text: str) -> RegistryRef:
    """'HOST[:PORT]/REPO[:TAG|@sha256:...]'; the tag defaults to 'latest'. docker.io is Docker Hub (its API
    host and credential key are the client's business), where a one-component name is library/NAME."""
    host, slash, rest = text.partition("/")
    if not slash or not host or not rest:
        raise ImgscanError(f"registry:{text}: expected registry:HOST[:PORT]/REPO[:TAG|@sha256:...]")
    digest = tag = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        blob_name(digest)  # a plain sha256 digest or ImgscanError
    else:
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, _, tag = rest.rpartition(":")
            if not _TAG_RE.match(tag):
                raise ImgscanError(f"registry:{text}: invalid tag {tag!r}")
        else:
            tag = "latest"
    if not _REPO_RE.match(rest):
        raise ImgscanError(f"registry:{text}: invalid repository name {rest!r}")
    if host in DOCKER_HUB_HOSTS and "/" not in rest:
        rest = f"library/{rest}"  # Docker Hub's official images, as `docker pull python` means them
    return RegistryRef(host, rest, tag, digest)


def _manifest(client: RegistryClient, ref: str) -> tuple[dict[str, Any], str, str]:
    """(manifest or index JSON, its digest, media type), verified against the digest asked for or the one
    the registry reports (Docker-Content-Digest)."""
    asked = ref if ref.startswith("sha256:") else None
    what = f"manifest {ref}"
    data, resp = client.fetch(f"manifests/{ref}", asked, what, {"Accept": ACCEPT})
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    reported = resp.headers.get("Docker-Content-Digest")
    if reported and reported.startswith("sha256:") and reported != got:
        raise ImgscanError(
            f"{client.where}: {what} digest mismatch: registry says {reported}, content is {got}"
        )
    doc = parse_json(data, f"{client.where}: {what}")
    if not isinstance(doc, dict):
        raise ImgscanError(f"{client.where}: {what} is not a JSON object")
    media_type = doc.get("mediaType") or (resp.headers.get("Content-Type") or "").split(";")[0].strip()
    return doc, got, media_type


def open_registry(text: str, platform: str, insecure: bool) -> Image:
    """Resolve 'HOST[:PORT]/REPO[:TAG|@sha256:...]' to a verified Image streaming its layers."""
    ref = parse_registry_ref(text)
    client = RegistryClient(ref.host, ref.repo, insecure)
    with client.request("", what="GET /v2/"):
        pass
    doc, digest, media_type = _manifest(client, ref.digest or ref.tag or "latest")
    for _ in range(_MAX_INDEX_DEPTH):
        if media_type not in INDEX_TYPES:
            break
        desc = _pick_platform(doc, platform, client.where)
        blob_name(desc["digest"])
        doc, digest, media_type = _manifest(client, desc["digest"])
    if media_type not in MANIFEST_TYPES:
        raise ImgscanError(f"{client.where}: {digest} is not an image manifest ({media_type})")
    config_desc = doc.get("config") or {}
    config_digest = config_desc.get("digest", "")
    blob_name(config_digest)
    data, _ = client.fetch(f"blobs/{config_digest}", config_digest, f"config {config_digest}")
    config = parse_json(data, f"{client.where}: config")
    layers = doc.get("layers") or []
    diff_ids = diff_ids_of(config, len(layers), client.where)
    refs = []
    for i, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        layer_digest = desc.get("digest", "")
        blob_name(layer_digest)
        layer_type = desc.get("mediaType", "")
        if "tar" not in layer_type:
            raise ImgscanError(
                f"{client.where}: layer {i} has media type {layer_type!r}, not a filesystem layer"
            )
        size = desc.get("size")
        if not isinstance(size, int) or size < 0:
            raise ImgscanError(f"{client.where}: layer {i} ({layer_digest}) has no valid size")
        blob = RemoteBlob(ref.host, ref.repo, layer_digest, size, insecure)
        refs.append(LayerRef(i, TAR, layer_type, layer_digest, diff_id, size, blob))  # type: ignore[arg-type]
    return Image(
        reference=f"registry:{ref.name}@{digest}",
        transport="registry",
        digest=digest,
        platform=format_platform(config) if isinstance(config, dict) else "unknown",
        config=config,
        layers=refs,
        manifest_media_type=media_type,
        tags=[ref.tag] if ref.tag and not ref.digest else [],
    )

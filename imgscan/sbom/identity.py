"""Who the image is: its name, digest and purl, from its tags or, failing that, the name of its file.

purl types: an OCI layout or archive, or a registry: image, is pkg:oci (version = manifest digest, name =
last path component, lowercase; repository_url when a tag or the registry: reference names a registry).
A docker-archive or a docker: daemon image has no manifest digest, only the image ID (config digest),
which is what pkg:docker's version means. A SIF or a directory has no
registry identity at all: no purl, and the SIF keeps its file sha256 as the hash.
"""

from __future__ import annotations

import json
import posixpath

from packageurl import PackageURL

from imgscan.sbom.model import NS, ImageInfo
from imgscan.sources.image import Image, LayerRef

_EXTENSIONS = (".sif", ".tar", ".oci")
_PURL_TRANSPORTS = ("oci-dir", "oci-archive", "registry", "docker-archive", "docker")


def _split(reference: str) -> tuple[str, str | None]:
    """'registry:5000/ns/app:tag@sha256:...' -> ('registry:5000/ns/app', 'tag')."""
    text = reference.split("@", 1)[0]
    colon = text.rfind(":")
    if colon > text.rfind("/"):
        return text[:colon], text[colon + 1 :] or None
    return text, None


def _has_registry(repository: str) -> bool:
    """Docker's rule: a first component with '.' or ':' (or 'localhost') is a registry host."""
    first, slash, _ = repository.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def _named_tag(tags: list[str]) -> tuple[str | None, str | None]:
    """(repository, tag) from the first tag that is a reference; an OCI ref.name without '/' or ':' is only
    a tag ('v4', 'latest'), not a name."""
    plain = None
    for tag in sorted(tags):
        if "/" in tag or ":" in tag:
            return _split(tag)
        plain = plain or tag
    return None, plain


def _location_name(image: Image) -> str:
    """The file or directory name of the image: 'demo' for singularity:/x/demo.sif."""
    location = image.reference.removeprefix(image.transport + ":").split("@sha256:", 1)[0]
    base = posixpath.basename(location.rstrip("/")) or "image"
    for ext in _EXTENSIONS:
        base = base.removesuffix(ext)
    return base


def _pulled_from(image: Image) -> str | None:
    """HOST[:PORT]/REPO of a registry: image, the repository it came from whatever its tags say."""
    if image.transport != "registry":
        return None
    return image.reference.removeprefix("registry:").split("@", 1)[0]


def _purl(image: Image, repository: str | None, name: str, tag: str | None) -> str | None:
    if image.digest is None or image.transport not in _PURL_TRANSPORTS:
        return None
    repository = repository or name
    registry = image.transport == "registry" or _has_registry(repository)
    if image.transport in (
        "docker-archive",
        "docker",
    ):  # pkg:docker/NAMESPACE/NAME, the registry host as qualifier
        host, _, path = repository.partition("/") if registry else ("", "", repository)
        namespace, _, last = path.rpartition("/")
        qualifiers = {"repository_url": host, "tag": tag}
        kind = "docker"
    else:  # pkg:oci/NAME, the whole repository as qualifier
        namespace, last = "", repository.rpartition("/")[2]
        arch = image.platform.split("/")[1] if image.platform.count("/") else ""
        qualifiers = {"repository_url": repository if registry else "", "tag": tag, "arch": arch}
        kind = "oci"
    return PackageURL(
        type=kind,
        namespace=namespace or None,
        name=last.lower(),
        version=image.digest,
        qualifiers={k: v for k, v in qualifiers.items() if v and v != "unknown"},
    ).to_string()


def _layer_value(ref: LayerRef) -> str:
    """'INDEX DIGEST DIFF_ID' ('-' for what the source lacks): properties are sorted, so the index keeps
    the order."""
    return f"{ref.index} {ref.digest or '-'} {ref.diff_id or '-'}"


def image_info(image: Image) -> ImageInfo:
    """The image's identity and the facts about it that hold no host path (platform, tags, labels, Env,
    Entrypoint/Cmd as JSON, layers): what `imgscan diff` compares between two SBOMs."""
    repository, tag = _named_tag(image.tags)
    repository = _pulled_from(image) or repository
    name = repository or _location_name(image)
    purl = _purl(image, repository, name, tag)
    config = image.container_config
    labels = config.get("Labels") or {}
    properties = [
        (NS + "platform", image.platform),
        (NS + "source", image.transport),
        *((NS + "tag", t) for t in sorted(image.tags)),
        *((f"{NS}label:{k}", str(v)) for k, v in sorted(labels.items())),
        *((NS + "env", str(e)) for e in config.get("Env") or []),
        *((NS + key.lower(), json.dumps(config[key])) for key in ("Entrypoint", "Cmd") if config.get(key)),
        *((NS + "image-layer", _layer_value(ref)) for ref in image.layers),
    ]
    return ImageInfo(
        ref=purl or f"image:{name}",
        name=name,
        digest=image.digest,
        purl=purl,
        properties=properties,
    )

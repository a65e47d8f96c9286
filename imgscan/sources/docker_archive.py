"""docker-archive tars (docker save, skopeo): manifest.json names the config and layer tars.

Legacy archives hold <id>/layer.tar (often a symlink to another layer's), skopeo writes <diff_id>.tar,
Docker >= 25 points into an OCI blobs/ tree. Layers are verified against the config's diff_ids; the image
digest reported is the image ID (the config's sha256), which is what Docker itself calls the image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgscan.errors import ImgscanError
from imgscan.sources.blobs import TarFiles, parse_json, read_blob
from imgscan.sources.image import TAR, Image, LayerRef
from imgscan.sources.oci import diff_ids_of, format_platform

LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar"


def _normalise_tag(tag: str) -> str:
    """'docker.io/library/x:1' and 'x:1' name the same image; a tag-less name means ':latest'."""
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if tag.startswith(prefix):
            tag = tag[len(prefix) :]
    last = tag.rsplit("/", 1)[-1]
    return tag if ":" in last else f"{tag}:latest"


def _select(entries: list[dict[str, Any]], selector: str | None, where: str) -> dict[str, Any]:
    if selector:
        want = _normalise_tag(selector)
        chosen = [e for e in entries if want in {_normalise_tag(t) for t in e.get("RepoTags") or []}]
    else:
        chosen = entries
    if len(chosen) == 1:
        return chosen[0]
    choices = "; ".join(", ".join(e.get("RepoTags") or []) or str(e.get("Config")) for e in entries)
    if not chosen:
        raise ImgscanError(f"{where}: no image tagged {selector!r}; choices: {choices}")
    raise ImgscanError(
        f"{where}: holds {len(chosen)} images, name one as docker-archive:FILE:REPO:TAG; choices: {choices}"
    )


def hex_in_name(name: str) -> str | None:
    """The sha256 a content-addressed file name carries ('<hex>.json', 'blobs/sha256/<hex>')."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".tar")
    return stem if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) else None


@dataclass
class SavedImage:
    """What a saved archive's manifest.json and config say about the image chosen from it."""

    config: dict[str, Any]
    image_id: str
    layer_names: list[str]
    diff_ids: list[str]
    tags: list[str]


def read_saved_image(read: Callable[[str], bytes], selector: str | None, where: str) -> SavedImage:
    """Choose the image from manifest.json and verify its config; read(name) returns a member's bytes
    (from an archive on disk or from what a stream kept), raising ImgscanError when it cannot."""
    entries = parse_json(read("manifest.json"), f"{where}: manifest.json")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ImgscanError(f"{where}: manifest.json is not a list of images")
    entry = _select(entries, selector, where)
    config_name = str(entry.get("Config") or "")
    config_bytes = read(config_name)
    image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    named = hex_in_name(config_name)
    if named is not None and image_id != f"sha256:{named}":
        raise ImgscanError(f"{where}: config {config_name} digest mismatch: got {image_id}")
    config = parse_json(config_bytes, f"{where}: config")
    layer_names = [str(name) for name in entry.get("Layers") or []]
    diff_ids = diff_ids_of(config, len(layer_names), where)
    return SavedImage(config, image_id, layer_names, diff_ids, list(entry.get("RepoTags") or []))


def saved_layer(index: int, name: str, diff_id: str, size: int) -> LayerRef:
    """A layer of a saved archive; its blob digest is known only where the member is named by it."""
    hexname = hex_in_name(name)
    return LayerRef(
        index=index,
        format=TAR,
        media_type=LAYER_MEDIA_TYPE,
        digest=f"sha256:{hexname}" if hexname else None,
        diff_id=diff_id,
        size=size,
    )


def read_docker_archive(files: TarFiles, selector: str | None, location: str) -> Image:
    where = files.description
    saved = read_saved_image(lambda name: read_blob(files, name), selector, where)
    layers = []
    for i, (name, diff_id) in enumerate(zip(saved.layer_names, saved.diff_ids, strict=True)):
        region = files.region(name)
        if region is None:
            raise ImgscanError(f"{where}: layer {i} ({name}) is missing from the archive")
        layer = saved_layer(i, name, diff_id, region.size)
        layer.region = region
        layers.append(layer)
    return Image(
        reference=f"docker-archive:{location}@{saved.image_id}",
        transport="docker-archive",
        digest=saved.image_id,
        platform=format_platform(saved.config),
        config=saved.config,
        layers=layers,
        tags=saved.tags,
    )

"""OCI image layouts (directory or oci-archive tar): pick one image from index.json, verify its blobs."""

from __future__ import annotations

from typing import Any

from imgscan.errors import ImgscanError
from imgscan.sources.blobs import LayoutFiles, blob_name, parse_json, read_blob
from imgscan.sources.image import TAR, Image, LayerRef

REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_MAX_INDEX_DEPTH = 4


def _describe(desc: dict[str, Any]) -> str:
    tag = (desc.get("annotations") or {}).get(REF_NAME)
    plat = desc.get("platform")
    parts = [desc.get("digest", "?")]
    if tag:
        parts.insert(0, tag)
    if plat:
        parts.append(format_platform(plat))
    return " ".join(parts)


def format_platform(plat: dict[str, Any]) -> str:
    text = f"{plat.get('os', '?')}/{plat.get('architecture', '?')}"
    return f"{text}/{plat['variant']}" if plat.get("variant") else text


def _descriptors(index: Any, what: str) -> list[dict[str, Any]]:
    """The manifests list of an index, checked to be descriptors (hostile JSON is common)."""
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not all(
        isinstance(d, dict) and isinstance(d.get("digest"), str) for d in manifests
    ):
        raise ImgscanError(f"{what}: no valid manifests list")
    return manifests


def _platform_matches(plat: dict[str, Any], wanted: str) -> bool:
    os_, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    return (
        plat.get("os") == os_
        and plat.get("architecture") == arch
        and (not variant or plat.get("variant") == variant)
    )


def _select(manifests: list[dict[str, Any]], selector: str | None, where: str) -> dict[str, Any]:
    """The descriptor a tag or digest names; the only one when there is no selector."""
    if selector and selector.startswith("sha256:"):
        chosen = [d for d in manifests if d.get("digest") == selector]
    elif selector:
        chosen = [d for d in manifests if (d.get("annotations") or {}).get(REF_NAME) == selector]
    else:
        chosen = manifests
    if len(chosen) == 1:
        return chosen[0]
    choices = "; ".join(_describe(d) for d in manifests) or "none"
    if not chosen:
        raise ImgscanError(f"{where}: no image matches {selector!r}; choices: {choices}")
    raise ImgscanError(f"{where}: holds {len(chosen)} images, name one by tag or @digest; choices: {choices}")


def _is_nested_digest(files: LayoutFiles, manifests: list[dict[str, Any]], selector: str | None) -> bool:
    """A digest that names a platform manifest inside a nested index rather than a top-level entry."""
    if not selector or not selector.startswith("sha256:"):
        return False
    if any(d.get("digest") == selector for d in manifests):
        return False
    return files.region(blob_name(selector)) is not None


def _pick_platform(index: dict[str, Any], platform: str, where: str) -> dict[str, Any]:
    manifests = _descriptors(index, f"{where}: image index")
    matching = [d for d in manifests if _platform_matches(d.get("platform") or {}, platform)]
    if not matching:
        have = ", ".join(format_platform(d.get("platform") or {}) for d in manifests)
        raise ImgscanError(f"{where}: no image for platform {platform} (has: {have}); use --platform")
    return matching[0]


def read_oci_layout(
    files: LayoutFiles, selector: str | None, platform: str, transport: str, location: str
) -> Image:
    """Resolve selector (tag, sha256 digest or None) in the layout to one verified image."""
    where = files.description
    layout = parse_json(read_blob(files, "oci-layout"), f"{where}: oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ImgscanError(f"{where}: oci-layout has no imageLayoutVersion")
    index = parse_json(read_blob(files, "index.json"), f"{where}: index.json")
    manifests = _descriptors(index, f"{where}: index.json")
    desc = (
        _select(manifests, selector, where)
        if not _is_nested_digest(files, manifests, selector)
        else {"digest": selector}
    )
    tags = [t for t in [(desc.get("annotations") or {}).get(REF_NAME)] if t]
    for _ in range(_MAX_INDEX_DEPTH):
        if desc.get("mediaType") not in INDEX_TYPES:
            break
        nested = parse_json(read_blob(files, blob_name(desc["digest"]), desc["digest"]), f"{where}: index")
        desc = _pick_platform(nested, platform, where)
    digest = desc.get("digest") or ""
    manifest = parse_json(read_blob(files, blob_name(digest), digest), f"{where}: manifest {digest}")
    if not isinstance(manifest, dict):
        raise ImgscanError(f"{where}: manifest {digest} is not a JSON object")
    media_type = manifest.get("mediaType") or desc.get("mediaType")
    if media_type not in MANIFEST_TYPES:
        raise ImgscanError(f"{where}: {digest} is not an image manifest ({media_type})")
    config_desc = manifest.get("config") or {}
    config = parse_json(
        read_blob(files, blob_name(config_desc.get("digest", "")), config_desc.get("digest")),
        f"{where}: config",
    )
    layers = layer_refs(files, manifest.get("layers") or [], config, where)
    plat = format_platform(config) if isinstance(config, dict) else "unknown"
    return Image(
        reference=f"{transport}:{location}@{digest}",
        transport=transport,
        digest=digest,
        platform=plat,
        config=config,
        layers=layers,
        manifest_media_type=media_type,
        tags=tags,
    )


def diff_ids_of(config: Any, count: int, where: str) -> list[str]:
    """The config's rootfs.diff_ids, which must match the manifest's layers one to one."""
    diff_ids = ((config or {}).get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != count:
        raise ImgscanError(f"{where}: config lists {len(diff_ids or [])} diff_ids for {count} layers")
    return diff_ids


def layer_refs(files: LayoutFiles, layers: list[dict[str, Any]], config: Any, where: str) -> list[LayerRef]:
    diff_ids = diff_ids_of(config, len(layers), where)
    refs = []
    for i, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        digest = desc.get("digest", "")
        media_type = desc.get("mediaType", "")
        if "tar" not in media_type:
            raise ImgscanError(f"{where}: layer {i} has media type {media_type!r}, not a filesystem layer")
        region = files.region(blob_name(digest))
        if region is None:
            raise ImgscanError(
                f"{where}: layer {i} blob {digest} is not in the layout (non-distributable or missing)"
            )
        if desc.get("size") is not None and desc["size"] != region.size:
            raise ImgscanError(
                f"{where}: layer {i} ({digest}) is {region.size} bytes, manifest says {desc['size']}"
            )
        refs.append(
            LayerRef(
                index=i,
                format=TAR,
                media_type=media_type,
                digest=digest,
                diff_id=diff_id,
                size=region.size,
                region=region,
            )
        )
    return refs

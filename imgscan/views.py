"""Plain-data views of an image for the `inspect`, `ls` and `scan --json` commands (JSON-ready dicts and
text lines)."""

from __future__ import annotations

import time
from typing import Any

from imgscan.errors import ImgscanError
from imgscan.layers.entry import BLOCK, CHAR, DIR, Entry
from imgscan.layers.fsview import FileSystem
from imgscan.sources.image import Image


def inspect_data(image: Image) -> dict[str, Any]:
    return {
        "reference": image.reference,
        "transport": image.transport,
        "digest": image.digest,
        "platform": image.platform,
        "tags": image.tags,
        "manifest_media_type": image.manifest_media_type,
        "layers": [
            {
                "index": ref.index,
                "digest": ref.digest,
                "diff_id": ref.diff_id,
                "media_type": ref.media_type,
                "size": ref.size,
            }
            for ref in image.layers
        ],
        "config": image.container_config,
        "created": image.config.get("created"),
        "history": image.config.get("history") or [],
        "metadata": image.metadata,
    }


def scan_data(
    image: Image, packages: dict[str, Any], cuda: dict[str, Any], warnings: list[str]
) -> dict[str, Any]:
    """`scan --json`: 'source' holds what depends on where the image was read from (reference, digests
    of stored blobs, their sizes and media types); everything else is the image's own content, the same
    from a registry, a daemon, an OCI layout or an archive of one image."""
    source = inspect_data(image)
    image_facts = {
        "platform": source.pop("platform"),
        "diff_ids": [layer.pop("diff_id") for layer in source["layers"]],
        **{key: source.pop(key) for key in ("config", "created", "history")},
    }
    return {"source": source, "image": image_facts, **packages, "cuda": cuda, "warnings": warnings}


def inspect_lines(data: dict[str, Any]) -> list[str]:
    cfg = data["config"]
    lines = [
        f"Reference:  {data['reference']}",
        f"Digest:     {data['digest'] or '-'}",
        f"Platform:   {data['platform']}",
    ]
    if data["tags"]:
        lines.append(f"Tags:       {', '.join(data['tags'])}")
    lines.append(f"Layers:     {len(data['layers'])}")
    for layer in data["layers"]:
        size = "-" if layer["size"] is None else f"{layer['size']:>12,}"
        lines.append(f"  {layer['index']:>3}  {layer['digest'] or '-'}  {size}  {layer['media_type']}")
        if layer["diff_id"] and layer["diff_id"] != layer["digest"]:
            lines.append(f"       diff_id {layer['diff_id']}")
    for key in ("Entrypoint", "Cmd", "WorkingDir", "User"):
        if cfg.get(key):
            lines.append(f"{key + ':':<12}{cfg[key]}")
    if cfg.get("Env"):
        lines.append("Env:")
        lines.extend(f"  {kv}" for kv in cfg["Env"])
    if cfg.get("Labels"):
        lines.append("Labels:")
        lines.extend(f"  {k}={v}" for k, v in sorted(cfg["Labels"].items()))
    if data["history"]:
        lines.append("History:")
        for h in data["history"]:
            empty = " (empty layer)" if h.get("empty_layer") else ""
            lines.append(f"  {h.get('created', '-')}  {h.get('created_by', '')}{empty}")
    return lines


def entry_data(path: str, entry: Entry) -> dict[str, Any]:
    data: dict[str, Any] = {
        "path": "/" + path,
        "type": entry.kind,
        "mode": f"{entry.mode:04o}",
        "uid": entry.uid,
        "gid": entry.gid,
        "size": entry.size,
        "mtime": entry.mtime,
        "link_target": entry.link_target,
        "layer": entry.layer,
    }
    if entry.kind in (CHAR, BLOCK):
        data["device"] = f"{entry.devmajor}:{entry.devminor}"
    return data


def list_entries(fs: FileSystem, path: str, recursive: bool) -> list[tuple[str, Entry]]:
    """What `ls PATH` shows: a directory's children (all descendants with -R), or the entry itself.

    A symlink given as PATH is shown as the link unless PATH ends with '/', like `ls -l`.
    """
    canonical, node = fs.resolve(path.strip("/") or "", follow_last=path.endswith("/") or path == "/")
    if node is None:
        raise ImgscanError(f"/{path.strip('/')}: no such file or directory in the image")
    if node.kind != DIR:
        return [(canonical, node)]
    if recursive:
        return list(fs.walk(canonical))
    prefix = f"{canonical}/" if canonical else ""
    return [(prefix + name, child) for name, child in sorted((node.children or {}).items())]


def entry_line(path: str, entry: Entry) -> str:
    size = f"{entry.devmajor},{entry.devminor}" if entry.kind in (CHAR, BLOCK) else str(entry.size)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime))
    line = f"{entry.mode_string()} {entry.uid:>5}/{entry.gid:<5} {size:>10} {when} L{entry.layer:<3} /{path}"
    if entry.link_target is not None:
        line += (" -> " if entry.kind != "hardlink" else " link to /") + entry.link_target
    return line

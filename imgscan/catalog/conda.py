"""Conda packages: one conda-meta/*.json per package installed in an environment (the prefix above it).

syft 1.18 has no conda cataloger; the purl follows the purl spec's conda type:
pkg:conda/NAME@VERSION?build=..&channel=..&subdir=..&type=conda|tar.bz2.
"""

from __future__ import annotations

import json
import posixpath
import re

from imgscan.catalog.common import Context, purl, text
from imgscan.catalog.model import Package

_META = re.compile(r"(?:(.*)/)?conda-meta/[^/]+\.json")


def channel_name(channel: str, subdir: str) -> str:
    """'https://conda.anaconda.org/conda-forge/linux-64' -> 'conda-forge'; 'pkgs/main' -> 'main'."""
    trimmed = channel.rstrip("/")
    if subdir and trimmed.endswith("/" + subdir):
        trimmed = trimmed[: -len(subdir) - 1]
    return trimmed.rpartition("/")[2]


def _string(meta: dict[str, object], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _files(meta: dict[str, object]) -> list[str]:
    """'files' (paths relative to the prefix), else paths_data.paths[]._path (newer conda writes both)."""
    files = _strings(meta.get("files"))
    paths_data = meta.get("paths_data")
    if not files and isinstance(paths_data, dict) and isinstance(paths_data.get("paths"), list):
        files = [
            p["_path"] for p in paths_data["paths"] if isinstance(p, dict) and isinstance(p.get("_path"), str)
        ]
    return files


def _package(ctx: Context, path: str, prefix: str, layer: int, data: bytes) -> Package | None:
    try:
        meta = json.loads(text(data))
    except (ValueError, RecursionError) as e:
        ctx.warnings.add("conda: unreadable conda-meta file", f"/{path}: {type(e).__name__}")
        return None
    name = meta.get("name") if isinstance(meta, dict) else None
    version = meta.get("version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(name, str) or not name or not isinstance(version, str):
        ctx.warnings.add("conda: conda-meta file without name and version", "/" + path)
        return None
    build, subdir, fn, license = (_string(meta, k) for k in ("build", "subdir", "fn", "license"))
    channel = channel_name(_string(meta, "channel"), subdir)
    archive = "conda" if fn.endswith(".conda") else "tar.bz2" if fn.endswith(".tar.bz2") else ""
    qualifiers = {"build": build, "channel": channel, "subdir": subdir, "type": archive}
    properties = {k: v for k, v in qualifiers.items() if v and k != "type"}
    properties["prefix"] = "/" + prefix
    return Package(
        name=name,
        version=version,
        ecosystem="conda",
        purl=purl("conda", "", name, version, qualifiers),
        location="/" + path,
        layer=layer,
        licenses=[license] if license else [],
        files=ctx.owned_files(posixpath.join(prefix, f) for f in _files(meta)),
        depends=list(dict.fromkeys(d.split()[0] for d in _strings(meta.get("depends")) if d.split())),
        properties=properties,
    )


def catalog_conda(ctx: Context) -> list[Package]:
    packages = []
    for path, entry in ctx.captured:
        m = _META.fullmatch(path)
        if m and entry.content is not None:
            package = _package(ctx, path, m.group(1) or "", entry.layer, entry.content)
            if package is not None:
                packages.append(package)
    return packages

"""Installed Python distributions: every *.dist-info/METADATA and *.egg-info (dir or file) in the image.

They are looked for anywhere, as syft does (system site-packages, dist-packages, /usr/local, venvs, conda
envs, /opt): a distribution is where its metadata is. As syft 1.18 does, the name is the PEP 503 normalised
one (PyYAML -> pyyaml) and the purl is pkg:pypi/NAME@VERSION; the name METADATA writes is a property.
depends holds the normalised names of the Requires-Dist entries that apply without an extra (the full
entries, markers and extras included, are the requires_dist property).
"""

from __future__ import annotations

import csv
import posixpath
import re

from imgscan.catalog.common import Context, purl, text
from imgscan.catalog.model import Package
from imgscan.layers.entry import Entry

_MULTI = {"requires-dist", "classifier", "provides-extra"}
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_EXTRA_MARKER = re.compile(r";.*\bextra\s*==")


def normalize_name(name: str) -> str:
    """PEP 503: runs of '-', '_', '.' become '-', lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_metadata(data: bytes) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Core-metadata headers (RFC 822 style, up to the first blank line): single fields (last one wins)
    and the multiple-use ones (Requires-Dist, Classifier, Provides-Extra), keys lowercased."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    key = ""
    for line in text(data).split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            if single or multi:
                break  # the description body follows
            continue
        if line[0] in " \t":
            if key in _MULTI and multi.get(key):
                multi[key][-1] += "\n" + line.strip()
            elif key in single:
                single[key] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            key = ""
            continue
        key = name.strip().lower()
        if key in _MULTI:
            multi.setdefault(key, []).append(value.strip())
        else:
            single[key] = value.strip()
    return single, multi


def licenses_of(single: dict[str, str], classifiers: list[str]) -> list[str]:
    """License-Expression (PEP 639) first, else the License field (its first line: some hold the whole
    text), else the 'License ::' classifiers."""
    if expression := single.get("license-expression", "").strip():
        return [expression]
    field = single.get("license", "").strip()
    if field and field.upper() != "UNKNOWN":
        return [field.split("\n", 1)[0].strip()]
    found = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    return [f for f in dict.fromkeys(found) if f and f != "OSI Approved"]


def requirement_names(requires: list[str]) -> list[str]:
    """Normalised names of the requirements not conditioned on an extra (those are optional features)."""
    names: dict[str, None] = {}
    for requirement in requires:
        m = _REQUIREMENT_NAME.match(requirement)
        if m and not _EXTRA_MARKER.search(requirement):
            names[normalize_name(m.group(1))] = None
    return list(names)


def _metadata_kind(path: str) -> str | None:
    """'wheel' for */X.dist-info/METADATA, 'egg' for */X.egg-info/PKG-INFO, 'egg-file' for a single-file
    X.egg-info; None for the other captured files (RECORD, installed-files.txt)."""
    parent, _, base = path.rpartition("/")
    parent_name = parent.rpartition("/")[2]
    if base == "METADATA" and parent_name.endswith(("dist-info", "DIST-INFO")):
        return "wheel"
    if base == "PKG-INFO" and parent_name.endswith(("egg-info", "EGG-INFO")):
        return "egg"
    if base.endswith(".egg-info"):  # captured, so a file
        return "egg-file"
    return None


def _record_paths(data: bytes) -> list[str]:
    """The first column of a RECORD (CSV); a broken row ends the list rather than the package."""
    rows = []
    try:
        for row in csv.reader(text(data).splitlines()):
            if row and row[0]:
                rows.append(row[0])
    except csv.Error:
        pass
    return rows


def _package(ctx: Context, path: str, entry: Entry, kind: str) -> Package | None:
    assert entry.content is not None
    single, multi = parse_metadata(entry.content)
    raw_name, version = single.get("name", "").strip(), single.get("version", "").strip()
    if not raw_name:
        ctx.warnings.add("python: metadata without a Name", "/" + path)
        return None
    if (
        raw_name == "Python"
    ):  # the interpreter's own egg-info (Python 2), not a distribution: syft skips it too
        return None
    name = normalize_name(raw_name)
    meta_dir = posixpath.dirname(path)
    site = meta_dir if kind == "egg-file" else posixpath.dirname(meta_dir)
    files: list[str] = []
    if kind == "wheel":
        data, _ = ctx.read(f"{meta_dir}/RECORD", "python RECORD")
        files = [posixpath.join(site, p) for p in _record_paths(data)] if data is not None else []
    elif kind == "egg":
        data, _ = ctx.read(f"{meta_dir}/installed-files.txt", "python installed-files.txt")
        if data is not None:
            files = [posixpath.join(meta_dir, p.strip()) for p in text(data).splitlines() if p.strip()]
    requires = multi.get("requires-dist", [])
    properties = {"metadata_name": raw_name, "site": "/" + site, "format": kind}
    if requires:
        properties["requires_dist"] = "\n".join(requires)
    return Package(
        name=name,
        version=version,
        ecosystem="python",
        purl=purl("pypi", "", name, version),
        location="/" + path,
        layer=entry.layer,
        licenses=licenses_of(single, multi.get("classifier", [])),
        files=ctx.owned_files(files),
        depends=requirement_names(requires),
        properties=properties,
    )


def catalog_python(ctx: Context) -> list[Package]:
    packages = []
    for path, entry in ctx.captured:
        kind = _metadata_kind(path)
        if kind is not None and (package := _package(ctx, path, entry, kind)) is not None:
            packages.append(package)
    return packages

"""Alpine packages: /lib/apk/db/installed (https://wiki.alpinelinux.org/wiki/Apk_spec).

The purl is syft's: pkg:apk/ID/NAME@VERSION?arch=..&distro=ID-VERSION_ID&upstream=ORIGIN (upstream only
when the origin package differs from the name).
"""

from __future__ import annotations

import re

from imgscan.catalog.common import Context, distro_qualifier, purl, text
from imgscan.catalog.model import Package

INSTALLED = "lib/apk/db/installed"
_CONSTRAINT = re.compile(r"[<>=~]")
_EXPRESSION = re.compile(r"\s(AND|OR|WITH)\s")


def parse_installed(data: bytes) -> tuple[list[list[tuple[str, str]]], int]:
    """Paragraphs of 'X:value' lines, order kept (F/R/M/a/Z lines build the file list in order), and the
    count of lines that are not such a line."""
    paragraphs: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    bad = 0
    for line in text(data).split("\n"):
        if not line:
            if current:
                paragraphs.append(current)
            current = []
        elif len(line) >= 2 and line[1] == ":":
            current.append((line[0], line[2:]))
        else:
            bad += 1
    if current:
        paragraphs.append(current)
    return paragraphs, bad


def dependency_names(value: str) -> list[str]:
    """'so:libc.musl-x86_64.so.1 musl>=1.2 !foo' -> ['so:libc.musl-x86_64.so.1', 'musl'] (conflicts out)."""
    names = [_CONSTRAINT.split(dep, 1)[0] for dep in value.split() if not dep.startswith("!")]
    return list(dict.fromkeys(n for n in names if n))


def license_list(value: str) -> list[str]:
    """One SPDX expression is kept whole; a space-separated list of names is split (as syft does)."""
    value = value.strip()
    if not value:
        return []
    return [value] if _EXPRESSION.search(value) else value.split()


def catalog_apk(ctx: Context) -> list[Package]:
    data, entry = ctx.read(INSTALLED, "apk database")
    if data is None or entry is None:
        return []
    paragraphs, bad = parse_installed(data)
    if bad:
        ctx.warnings.add("apk: unparsable lines in database", f"/{INSTALLED} ({bad} lines)")
    os = ctx.os
    namespace = os.id if os is not None else "alpine"
    packages = []
    for fields in paragraphs:
        single = dict(fields)  # the last of a repeated field wins
        name, version = single.get("P", ""), single.get("V", "")
        if not name:
            ctx.warnings.add("apk: entry without a P (name) field", f"/{INSTALLED}")
            continue
        files, directory = [], ""
        for key, value in fields:
            if key == "F":
                directory = value
            elif key == "R":
                files.append(f"{directory}/{value}" if directory else value)
        origin = single.get("o", "")
        qualifiers = {
            "arch": single.get("A", ""),
            "distro": distro_qualifier(os),
            "upstream": origin if origin != name else "",
        }
        properties = {
            k: single[f] for k, f in (("arch", "A"), ("origin", "o"), ("commit", "c")) if single.get(f)
        }
        packages.append(
            Package(
                name=name,
                version=version,
                ecosystem="apk",
                purl=purl("apk", namespace, name, version, qualifiers),
                location="/" + INSTALLED,
                layer=entry.layer,
                licenses=license_list(single.get("L", "")),
                files=ctx.owned_files(files),
                depends=dependency_names(single.get("D", "")),
                properties=properties,
            )
        )
    return packages

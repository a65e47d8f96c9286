"""Debian packages: /var/lib/dpkg/status (or distroless status.d/*), owned files, copyright licenses.

Names, versions, purls and licenses follow syft 1.18 (the oracle the tests compare with): the purl is
pkg:deb/ID/NAME@VERSION?arch=..&distro=ID-VERSION_ID&upstream=SOURCE[@SOURCE_VERSION], the epoch kept in
the version; licenses come from /usr/share/doc/NAME/copyright by syft's patterns. Owned files come from
dpkg's info/NAME[:ARCH].list (syft reads md5sums and conffiles; .list is dpkg's complete record).
"""

from __future__ import annotations

import re

from imgscan.catalog.common import Context, distro_qualifier, purl, text
from imgscan.catalog.model import Package
from imgscan.layers.entry import DIR

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d"
INFO = "var/lib/dpkg/info"
DOC = "usr/share/doc"

# dpkg states (the third word of Status) in which none of a package's files are on disk. A package only
# marked for removal ('deinstall ok installed') is still installed: syft drops it, we keep it.
_GONE_STATES = {"not-installed", "config-files"}
_SOURCE = re.compile(r"(\S+)( \((.*)\))?")

# syft's copyright patterns (syft/pkg/cataloger/debian/parse_copyright.go)
_LICENSE_FIELD = re.compile(r"^License: (\S*)")
_COMMON_LICENSE = re.compile(r"/usr/share/common-licenses/([0-9A-Za-z_.\-]+)")
_AGREEMENT_HEADING = re.compile(r"^\s*(LICENSE AGREEMENT(?: FOR .+?)?)\s*$", re.IGNORECASE)
_SENTENCE_AFTER_HEADING = re.compile(r"[^\n]+?\n-+?\n+(.*?\.)", re.IGNORECASE | re.DOTALL)
_MULTI_LICENSE_EXCEPTIONS = ("NVIDIA Software License Agreement",)


def parse_paragraphs(data: bytes) -> tuple[list[dict[str, str]], int]:
    """deb822 paragraphs as {lowercased field: value} (continuation lines joined with '\\n'), and the count
    of lines that fit no field (a corrupt or truncated file); field names are case-insensitive."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    bad = 0
    for line in text(data).split("\n"):
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + line.strip()
            else:
                bad += 1
        elif ":" in line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            current.setdefault(key, value.strip())
        else:
            bad += 1
    if current:
        paragraphs.append(current)
    return paragraphs, bad


def depends_names(*fields: str) -> list[str]:
    """'a (>= 1), b | c:any' -> ['a', 'b', 'c']: every alternative, architecture qualifiers dropped."""
    names: dict[str, None] = {}
    for field in fields:
        for alternative in re.split(r"[,|]", field):
            name = alternative.strip().split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0]
            if name:
                names[name] = None
    return list(names)


def _single_license(candidate: str) -> str:
    candidate = candidate.replace("\n", " ").strip()
    if any(exception in candidate for exception in _MULTI_LICENSE_EXCEPTIONS):
        return candidate.removesuffix(".")
    if " or " in candidate or " and " in candidate:
        return ""  # a summary of several licenses: their own License lines name them
    if candidate.lower() == "none":
        return ""
    return candidate.removesuffix(".")


def copyright_licenses(data: bytes) -> list[str]:
    """License names from a debian/copyright file the way syft finds them: 'License:' fields, references to
    /usr/share/common-licenses/X, 'LICENSE AGREEMENT' headings and the first sentence under a heading."""
    content = text(data)
    found: set[str] = set()
    for line in content.split("\n"):
        for pattern in (_LICENSE_FIELD, _COMMON_LICENSE, _AGREEMENT_HEADING):
            m = pattern.search(line)
            if m and (value := _single_license(m.group(1))):
                found.add(value)
    m = _SENTENCE_AFTER_HEADING.match(content)
    if m and (value := _single_license(m.group(1))):
        found.add(value)
    return sorted(found)


def _installed(fields: dict[str, str]) -> bool:
    status = fields.get("status", "").split()
    return not (len(status) == 3 and status[2] in _GONE_STATES)


class _DpkgReader:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        os = ctx.os
        debian_like = os is not None and (os.id == "debian" or "debian" in os.id_like)
        # syft writes no purl without a Debian-like os-release; we fall back to the 'debian' namespace
        self.namespace = os.id if debian_like and os is not None else "debian"
        self.distro = distro_qualifier(os) if debian_like else ""
        self.licenses: dict[str, list[str]] = {}

    def packages(
        self, location: str, data: bytes, layer: int, files_dir: str, md5sums: bool
    ) -> list[Package]:
        paragraphs, bad = parse_paragraphs(data)
        if bad:
            self.ctx.warnings.add("dpkg: unparsable lines in database", f"/{location} ({bad} lines)")
        if data and not data.endswith(b"\n"):
            self.ctx.warnings.add("dpkg: database ends mid-line (truncated?)", f"/{location}")
        out = []
        for fields in paragraphs:
            name = fields.get("package", "")
            if not name:
                self.ctx.warnings.add("dpkg: entry without a Package field", f"/{location}")
                continue
            if not _installed(fields):
                continue
            if not fields.get("version"):
                self.ctx.warnings.add("dpkg: package without a Version", f"/{location}: {name}")
            out.append(self._package(fields, location, layer, files_dir, md5sums))
        return out

    def _package(
        self, fields: dict[str, str], location: str, layer: int, files_dir: str, md5sums: bool
    ) -> Package:
        name, version, arch = fields["package"], fields.get("version", ""), fields.get("architecture", "")
        source, source_version = fields.get("source", ""), ""
        m = _SOURCE.match(source)
        if m and m.group(3):
            source, source_version = m.group(1), m.group(3)
        qualifiers = {
            "arch": arch,
            "distro": self.distro,
            "upstream": f"{source}@{source_version}" if source and source_version else source,
        }
        listed, list_layer = self._listed_files(name, arch, files_dir, md5sums)
        licenses = self._copyright(name)
        properties = {
            k: v for k, v in (("arch", arch), ("source", source), ("source_version", source_version)) if v
        }
        if fields.get("status"):
            properties["status"] = fields["status"]
        return Package(
            name=name,
            version=version,
            ecosystem="deb",
            purl=purl("deb", self.namespace, name, version, qualifiers),
            location="/" + location,
            layer=list_layer if list_layer is not None else layer,
            licenses=licenses,
            files=self.ctx.owned_files(listed),
            depends=depends_names(fields.get("pre-depends", ""), fields.get("depends", "")),
            properties=properties,
        )

    def _listed_files(
        self, name: str, arch: str, files_dir: str, md5sums: bool
    ) -> tuple[list[str], int | None]:
        """dpkg's file list of a package (info/NAME:ARCH.list, else info/NAME.list; for distroless
        status.d/NAME.md5sums) and the layer that last wrote it: where the package was installed."""
        keys = [f"{name}:{arch}", name] if arch and arch != "all" else [name]
        suffix = ".md5sums" if md5sums else ".list"
        for key in keys:
            data, entry = self.ctx.read(f"{files_dir}/{key}{suffix}", "dpkg file list")
            if data is None or entry is None:
                continue
            lines = text(data).splitlines()
            if md5sums:  # "<md5>  <path relative to />"
                lines = [line.split(None, 1)[1] for line in lines if len(line.split(None, 1)) == 2]
            return lines, entry.layer
        return [], None

    def _copyright(self, name: str) -> list[str]:
        """Licenses of /usr/share/doc/NAME/copyright (read once per name: several arches share it)."""
        if name not in self.licenses:
            data, _ = self.ctx.read(f"{DOC}/{name}/copyright", "dpkg copyright")
            self.licenses[name] = copyright_licenses(data) if data is not None else []
        return self.licenses[name]


def catalog_dpkg(ctx: Context) -> list[Package]:
    """Packages of the dpkg database, and of the per-package files distroless images keep in status.d."""
    reader = _DpkgReader(ctx)
    packages: list[Package] = []
    data, entry = ctx.read(STATUS, "dpkg database")
    if data is not None and entry is not None:
        packages += reader.packages(STATUS, data, entry.layer, INFO, md5sums=False)
    status_d = ctx.lookup(STATUS_D)
    if status_d is not None and status_d.kind == DIR and status_d.children:
        for child in sorted(status_d.children):
            if child.endswith(".md5sums"):
                continue
            path = f"{STATUS_D}/{child}"
            data, entry = ctx.read(path, "dpkg database")
            if data is not None and entry is not None:
                packages += reader.packages(path, data, entry.layer, STATUS_D, md5sums=True)
    return packages

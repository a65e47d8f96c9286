"""Collect an image's SBOM facts once: the image, its OS, packages, ELF objects, their links, CUDA findings.

An owned library is nested under its package (parent), not tied to it by a dependency edge: a package's
files are part of it (CycloneDX nested components, SPDX CONTAINS), while dependency edges stay what the
package metadata (Depends, Requires-Dist) and the linker say is needed. Mixing the two would make
"ships" and "needs" indistinguishable to a consumer walking the graph.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter

from packaging.utils import canonicalize_name

from imgscan import __version__
from imgscan.catalog.model import OsRelease, Package
from imgscan.cuda.report import CudaReport
from imgscan.cuda.stack import owner_index
from imgscan.layers.scan import MergedImage
from imgscan.linker.report import Closures
from imgscan.sbom.identity import image_info
from imgscan.sbom.libraries import cuda_rule, library_items
from imgscan.sbom.model import NS, OS, PACKAGE, Item, Sbom


def package_refs(packages: list[Package]) -> list[str]:
    """The purl; a purl listed more than once (one wheel in two site dirs) is told apart by location."""
    counts = Counter(p.purl for p in packages)
    return [p.purl if counts[p.purl] == 1 else f"{p.purl}#{p.location}" for p in packages]


def _name_key(ecosystem: str, name: str) -> str:
    return canonicalize_name(name) if ecosystem == "python" else name


def _scope(package: Package) -> str:
    """Where a package was installed: its site dir (python) or the directory of its database entry (conda
    env, dpkg status)."""
    return package.properties.get("site") or posixpath.dirname(package.location)


def package_depends(packages: list[Package], refs: list[str]) -> dict[str, list[str]]:
    """Package.depends resolved by name within the ecosystem; where a name is installed in several places,
    the copies in the dependent's own install scope win."""
    by_name: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(packages):
        by_name.setdefault((p.ecosystem, _name_key(p.ecosystem, p.name)), []).append(i)
    depends = {}
    for i, p in enumerate(packages):
        targets: set[str] = set()
        for name in p.depends:
            found = by_name.get((p.ecosystem, _name_key(p.ecosystem, name)), [])
            local = [j for j in found if _scope(packages[j]) == _scope(p)]
            targets.update(refs[j] for j in (local or found) if j != i)
        depends[refs[i]] = sorted(targets)
    return depends


def _package_item(p: Package, ref: str, layer_ids: dict[int, str]) -> Item:
    props = [(NS + "location", p.location), (NS + "ecosystem", p.ecosystem)]
    if p.layer in layer_ids:
        props.append((NS + "layer", layer_ids[p.layer]))
    return Item(
        ref=ref,
        kind=PACKAGE,
        name=p.name,
        version=p.version,
        purl=p.purl,
        licenses=list(p.licenses),
        properties=sorted(props),
    )


def _os_item(os: OsRelease) -> Item:
    props = [(NS + "os-id", os.id), *((NS + "os-id-like", i) for i in os.id_like)]
    if os.version_codename:
        props.append((NS + "os-codename", os.version_codename))
    return Item(
        ref=f"os:{os.id}@{os.version_id or 'unknown'}",
        kind=OS,
        name=os.id,
        version=os.version_id,
        description=os.pretty_name or os.name,
        properties=sorted(props),
    )


def _image_properties(report: CudaReport) -> list[tuple[str, str]]:
    """The facts `scan` prints besides the components: torch installs and the findings; and, as JSON for
    `imgscan diff`, each torch install with its pins and each CUDA library torch loads (a missing one too,
    which has no component)."""
    props = [(NS + "finding", f"{f.severity} {f.id}: {f.message}") for f in report.findings]
    for t in report.torch:
        how = f"loaded by {t['interpreter']}" if t["interpreter"] else "each library alone (no interpreter)"
        props.append((NS + "torch", f"{t['version']} (CUDA {t['cuda']}) at {t['path']}, resolved as {how}"))
        install = {k: t[k] for k in ("path", "version", "cuda", "pins")}
        props.append((NS + "torch-install", json.dumps(install, sort_keys=True)))
    for lib in report.libraries:
        row = {"name": lib.name, "version": lib.version, "path": lib.realpath, "rule": cuda_rule(lib)}
        props.append((NS + "cuda-library", json.dumps(row, sort_keys=True)))
    return sorted(set(props))


def build_sbom(
    merged: MergedImage,
    os: OsRelease | None,
    packages: list[Package],
    report: CudaReport,
    closures: Closures,
) -> Sbom:
    """The SBOM model of a scanned image (catalog, CUDA report and loader context already computed)."""
    image = image_info(merged.image)
    layer_ids = {
        ref.index: digest for ref in merged.image.layers if (digest := ref.diff_id or ref.digest) is not None
    }
    refs = package_refs(packages)
    ref_of = {id(p): ref for p, ref in zip(packages, refs, strict=True)}
    owners = {path: ref_of[id(p)] for path, p in owner_index(merged.fs, packages).items()}
    libraries, links = library_items(merged.fs, closures, owners, layer_ids, report)
    items = [_package_item(p, ref, layer_ids) for p, ref in zip(packages, refs, strict=True)] + libraries
    if os is not None:
        items.append(_os_item(os))
    top = sorted(item.ref for item in items if item.parent is None)  # the OS, packages, unowned files
    depends = {**package_depends(packages, refs), **links, image.ref: top}
    return Sbom(
        tool_version=__version__,
        image=image,
        items=sorted(items, key=lambda item: item.ref),
        depends=dict(sorted(depends.items())),
        properties=_image_properties(report),
    )

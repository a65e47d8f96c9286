"""The CUDA stack report: the library of each family that wins, why, its version and evidence, the other
copies it shadows, and the findings a user must see before deploying."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from imgscan.catalog.model import Package
from imgscan.cuda.evidence import Evidence, version_of
from imgscan.cuda.families import families_of_dist, family_of
from imgscan.cuda.process import PRELOAD, TorchProcess
from imgscan.errors import ImgscanError
from imgscan.layers.entry import FILE, HARDLINK
from imgscan.layers.fsview import FileSystem
from imgscan.linker.search import CACHE, DEFAULT, HOST, LD_LIBRARY_PATH, NOT_FOUND, Edge, Process

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (INFO, WARNING, ERROR)
# Minimum Linux driver of each CUDA release (NVIDIA CUDA Toolkit release notes, table 3, GA versions).
MIN_DRIVER = {
    "11.8": "520.61.05", "12.0": "525.60.13", "12.1": "530.30.02", "12.2": "535.54.03", "12.3": "545.23.06",
    "12.4": "550.54.14", "12.5": "555.42.02", "12.6": "560.28.03", "12.8": "570.26", "12.9": "575.51.03",
    "13.0": "580.65.06",
}  # fmt: skip


@dataclass
class CudaLibrary:
    name: str  # family: cudart, cublas, cublasLt, cudnn, cudnn_ops, nccl, ...
    soname: str
    path: str | None
    realpath: str | None
    rule: str
    via: str | None
    layer: int | None
    owner: str | None  # purl of the owning package
    version: str | None
    evidence: list[Evidence] = field(default_factory=list)
    requested_by: list[str] = field(default_factory=list)
    shadowed: list[str] = field(default_factory=list)  # other copies of the soname in the image


@dataclass
class Finding:
    id: str
    severity: str
    message: str
    objects: list[str] = field(default_factory=list)


def owner_index(fs: FileSystem, packages: list[Package]) -> dict[str, Package]:
    """Canonical image path -> owning package, for the files packages list (symlinks resolved)."""
    index: dict[str, Package] = {}
    for package in packages:
        for path in package.files:
            try:
                canonical, entry = fs.resolve(path.lstrip("/"))
            except ImgscanError:
                continue
            if entry is not None and entry.elf is not None:
                index.setdefault("/" + canonical, package)
    return index


def copies_by_soname(fs: FileSystem) -> dict[str, list[str]]:
    """Every ELF file of a CUDA family in the image, by SONAME (real paths, sorted)."""
    copies: dict[str, list[str]] = {}
    for path, entry in fs.walk():
        soname = entry.elf.soname if entry.kind in (FILE, HARDLINK) and entry.elf is not None else None
        if soname and family_of(soname) is not None:
            copies.setdefault(soname, []).append("/" + path)
    return copies


def libraries_of(
    fs: FileSystem, tp: TorchProcess, owners: dict[str, Package], copies: dict[str, list[str]]
) -> list[CudaLibrary]:
    """One entry per CUDA soname torch's process loads (NEEDED, preloaded or dlopened)."""
    found: dict[str, CudaLibrary] = {}
    for process in tp.processes:
        closure = process.closure()
        versioned = _versioned_cudnn_subs(process)
        for edge in [*closure.edges, *versioned]:
            family = family_of(edge.name)
            if family is None:
                continue
            key = edge.name
            if key in found:
                if edge.requested_by not in found[key].requested_by:
                    found[key].requested_by.append(edge.requested_by)
                continue
            found[key] = _library(fs, family, edge, owners, copies)
    return sorted(found.values(), key=lambda lib: (lib.name, lib.soname))


def _versioned_cudnn_subs(process: Process) -> list[Edge]:
    """cuDNN 9 dlopens its sub-libraries as '%s.%d' % ('libcudnn_ops.so', 9): resolve the versioned name
    from the front library that holds the string."""
    loader = process.loader
    edges = []
    for obj in loader.objects:
        soname = obj.facts.soname or ""
        major = re.fullmatch(r"libcudnn(?:_[a-z_]+)?\.so\.(\d+)", soname)
        if major is None:
            continue
        for name in obj.facts.strings.get("dlopen", ()):
            if (family_of(name) or "").startswith("cudnn_") and name.endswith(".so"):
                edges.append(loader.peek(f"{name}.{major.group(1)}", obj))
    # the engines and heuristic names live in libcudnn_graph: follow one level through resolved subs
    for edge in list(edges):
        entry = loader.fs.lookup(edge.realpath.lstrip("/")) if edge.realpath else None
        for name in entry.elf.strings.get("dlopen", ()) if entry and entry.elf else ():
            if (family_of(name) or "").startswith("cudnn_") and name.endswith(".so"):
                versioned = f"{name}.{edge.name.rsplit('.', 1)[-1]}"
                if all(e.name != versioned for e in edges):
                    requester = next((o for o in loader.objects if o.path == edge.requested_by), None)
                    if requester is not None:
                        edges.append(loader.peek(versioned, requester))
    return edges


def _library(
    fs: FileSystem, family: str, edge: Edge, owners: dict[str, Package], copies: dict[str, list[str]]
) -> CudaLibrary:
    owner = owners.get(edge.realpath or "")
    entry = fs.lookup(edge.realpath.lstrip("/")) if edge.realpath else None
    soname = (entry.elf.soname if entry and entry.elf and entry.elf.soname else None) or edge.name
    strings = entry.elf.strings if entry and entry.elf else {}
    version, evidence = (
        version_of(fs, family, soname, edge.realpath, strings, owner) if edge.realpath else (None, [])
    )
    shadowed = [p for p in copies.get(soname, []) if p != edge.realpath]
    return CudaLibrary(
        family,
        soname,
        edge.path,
        edge.realpath,
        edge.rule,
        edge.via,
        edge.layer,
        owner.purl if owner else None,
        version,
        evidence,
        [edge.requested_by],
        shadowed,
    )


def pin_matches(version: str, pin: str) -> bool:
    """pin is an exact version ('9.24.0.43', '13.1.1.3.*') or a specifier ('<14,>=13.0.88')."""
    spec = pin if pin[:1] in "<>=!~" else f"=={pin}"
    try:
        return SpecifierSet(spec).contains(version, prereleases=True)
    except InvalidSpecifier:
        return True  # an unreadable pin is not evidence of a mismatch


def findings_for(tp: TorchProcess, libraries: list[CudaLibrary]) -> list[Finding]:
    install = tp.install
    out: list[Finding] = []
    pins_by_family: dict[str, tuple[str, str]] = {}
    for dist, pin in install.pins.items():
        for family in families_of_dist(dist):
            pins_by_family[family] = (dist, pin)
    for lib in libraries:
        base = "cudnn" if lib.name.startswith("cudnn") else lib.name
        pinned = pins_by_family.get(base)
        if (
            pinned
            and lib.version
            and not lib.name.startswith("cudnn_")
            and not pin_matches(lib.version, pinned[1])
        ):
            out.append(
                Finding(
                    "cuda.pin-mismatch",
                    ERROR,
                    f"{lib.soname}: loaded {lib.version} from {lib.realpath}, torch "
                    f"{install.version} pins {pinned[0]} {pinned[1]}",
                    [lib.realpath or lib.soname],
                )
            )
        own_copy = [p for p in lib.shadowed if p.startswith(install.site_dir + "/")]
        if lib.rule in (LD_LIBRARY_PATH, CACHE, DEFAULT) and own_copy:
            out.append(
                Finding(
                    "cuda.shadowed-by-search-path",
                    WARNING,
                    f"{lib.soname}: loaded through {lib.rule} from {lib.realpath} although torch "
                    f"ships {own_copy[0]}",
                    [lib.realpath or "", *own_copy],
                )
            )
        if lib.rule == NOT_FOUND:
            out.append(
                Finding(
                    "cuda.missing",
                    ERROR,
                    f"{lib.soname}: not found in the image (needed by "
                    f"{', '.join(sorted(set(lib.requested_by)))})",
                    list(lib.requested_by),
                )
            )
        if lib.rule == PRELOAD:
            out.append(
                Finding(
                    "cuda.torch-preload",
                    INFO,
                    f"{lib.soname}: not found by the linker; torch preloads {lib.realpath}",
                    [lib.realpath or ""],
                )
            )
    out += _split_cudnn(libraries) + _mixed_majors(libraries) + _host_driver(tp, libraries)
    return sorted(out, key=lambda f: (-SEVERITIES.index(f.severity), f.id, f.message))


def _split_cudnn(libraries: list[CudaLibrary]) -> list[Finding]:
    front = next((lib for lib in libraries if lib.name == "cudnn" and lib.realpath), None)
    if front is None:
        return []
    home = posixpath.dirname(front.realpath or "")
    return [
        Finding(
            "cuda.cudnn-split",
            ERROR,
            f"{lib.soname} resolves to {lib.realpath}, not beside {front.soname} ({front.realpath})",
            [front.realpath or "", lib.realpath or ""],
        )
        for lib in libraries
        if lib.name.startswith("cudnn_") and lib.realpath and posixpath.dirname(lib.realpath) != home
    ]


def _mixed_majors(libraries: list[CudaLibrary]) -> list[Finding]:
    majors = sorted({lib.soname for lib in libraries if lib.name == "cudart" and lib.realpath})
    if len(majors) < 2:
        return []
    return [Finding("cuda.mixed-majors", ERROR, f"one process loads {' and '.join(majors)}", majors)]


def _host_driver(tp: TorchProcess, libraries: list[CudaLibrary]) -> list[Finding]:
    host = sorted({e.name for p in tp.processes for e in p.closure().dlopens + p.edges if e.rule == HOST})
    if not host:
        return []
    cudart = next((lib for lib in libraries if lib.name == "cudart" and lib.version), None)
    cuda = ".".join((cudart.version if cudart else tp.install.cuda or "").split(".")[:2])
    need = f"; CUDA {cuda} needs driver >= {MIN_DRIVER[cuda]}" if cuda in MIN_DRIVER else ""
    return [
        Finding("cuda.host-driver", INFO, f"expects the host driver to provide {', '.join(host)}{need}", host)
    ]

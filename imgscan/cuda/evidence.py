"""The version of a CUDA library file and the evidence for it, each piece saying how sure it is.

Sources, best first: the package that owns the file (pip dist-info RECORD, dpkg, rpm, conda); NVIDIA's
full-version file name (libcudnn.so.9.13.0); a version string in the binary (NCCL); the version header
installed beside it (cudnn_version.h, cublas_api.h, cuda_runtime_api.h); CUDA's version.json.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass

from imgscan.catalog.model import Package
from imgscan.errors import ImgscanError
from imgscan.layers.fsview import FileSystem

HIGH, MEDIUM, LOW = "high", "medium", "low"
_RANK = {HIGH: 0, MEDIUM: 1, LOW: 2}
_NCCL = re.compile(r"NCCL version (\d+\.\d+\.\d+)")
_HEADERS = {
    "cudnn": ("cudnn_version.h", ("CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL")),
    "cublas": ("cublas_api.h", ("CUBLAS_VER_MAJOR", "CUBLAS_VER_MINOR", "CUBLAS_VER_PATCH")),
    "cublasLt": ("cublas_api.h", ("CUBLAS_VER_MAJOR", "CUBLAS_VER_MINOR", "CUBLAS_VER_PATCH")),
    "nccl": ("nccl.h", ("NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH")),
}
_VERSION_JSON_KEYS = {
    "cudart": "cuda_cudart", "cublas": "libcublas", "cublasLt": "libcublas", "cufft": "libcufft",
    "curand": "libcurand", "cusolver": "libcusolver", "cusparse": "libcusparse", "nvrtc": "cuda_nvrtc",
    "nvjitlink": "libnvjitlink", "cufile": "libcufile", "cupti": "cuda_cupti",
}  # fmt: skip


@dataclass(frozen=True)
class Evidence:
    source: str  # 'pip', 'deb', 'rpm', 'conda', 'apk', 'file-name', 'binary-string', 'header', 'version.json'
    version: str
    detail: str  # the package, file or string the version was read from
    confidence: str


def _package_evidence(owner: Package | None) -> list[Evidence]:
    if owner is None:
        return []
    source = "pip" if owner.ecosystem == "python" else owner.ecosystem
    return [Evidence(source, owner.version, f"{owner.name} {owner.version} ({owner.location})", HIGH)]


def _file_name_evidence(soname: str | None, realpath: str) -> list[Evidence]:
    """libcudnn.so.9.13.0 behind the soname libcudnn.so.9: NVIDIA's deb, rpm and tarball layout."""
    base = posixpath.basename(realpath)
    stem = (soname or base).split(".so", 1)[0] + ".so."
    if not base.startswith(stem):
        return []
    version = base[len(stem) :]
    if re.fullmatch(r"\d+(\.\d+){2,3}", version):
        return [Evidence("file-name", version, realpath, HIGH)]
    return []


def _string_evidence(family: str, strings: dict[str, list[str]]) -> list[Evidence]:
    if family != "nccl":
        return []
    out = []
    for text in strings.get("version", []):
        match = _NCCL.search(text)
        if match:
            out.append(Evidence("binary-string", match.group(1), text, HIGH))
    return out


def _header_evidence(fs: FileSystem, family: str, realpath: str) -> list[Evidence]:
    """The version header of an install: <libdir>/../include/<header>, as NVIDIA's layouts put it."""
    if family not in _HEADERS:
        return []
    name, macros = _HEADERS[family]
    path = posixpath.normpath(posixpath.join(posixpath.dirname(realpath), "..", "include", name))
    try:
        canonical, entry = fs.resolve(path.lstrip("/"))
    except ImgscanError:  # a hostile symlink loop is just no evidence
        return []
    if entry is None or entry.content is None:
        return []
    text = entry.content.decode("utf-8", "replace")
    parts = []
    for macro in macros:
        match = re.search(rf"#define\s+{macro}\s+(\d+)", text)
        if match is None:
            return []
        parts.append(match.group(1))
    return [Evidence("header", ".".join(parts), "/" + canonical, MEDIUM)]


def _version_json_evidence(fs: FileSystem, family: str, realpath: str) -> list[Evidence]:
    """CUDA base images' version.json at the root of the toolkit the library lives in."""
    key = _VERSION_JSON_KEYS.get(family)
    if key is None:
        return []
    path = posixpath.normpath(posixpath.join(posixpath.dirname(realpath), "..", "version.json"))
    entry = fs.lookup(path.lstrip("/"))
    if entry is None or entry.content is None:
        return []
    try:
        version = json.loads(entry.content)[key]["version"]
    except (ValueError, KeyError, TypeError):
        return []
    return [Evidence("version.json", str(version), path, MEDIUM)]


def version_of(
    fs: FileSystem,
    family: str,
    soname: str | None,
    realpath: str,
    strings: dict[str, list[str]],
    owner: Package | None,
) -> tuple[str | None, list[Evidence]]:
    """The best-supported version and all evidence, best first."""
    base_family = "cudnn" if family.startswith("cudnn") else family
    evidence = [
        *_package_evidence(owner),
        *_file_name_evidence(soname, realpath),
        *_string_evidence(base_family, strings),
        *_header_evidence(fs, base_family, realpath),
        *_version_json_evidence(fs, base_family, realpath),
    ]
    unique = {(e.source, e.version): e for e in evidence}.values()
    evidence = sorted(unique, key=lambda e: _RANK[e.confidence])
    return (evidence[0].version if evidence else None), evidence

"""Every torch install in an image: version and CUDA build (torch/version.py) and its CUDA pins.

Pins come from torch's METADATA Requires-Dist (nvidia-cudnn-cu13==9.24.0.43) and, for the libraries torch
asks for through cuda-toolkit extras (cuda-toolkit[cublas,cudart,...]==13.0.3), from the cuda-toolkit
METADATA installed beside it (nvidia-cublas==13.1.1.3.*). Markers are evaluated for Linux and the
Python version the site directory belongs to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from packaging.markers import InvalidMarker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from imgscan.layers.entry import DIR
from imgscan.layers.fsview import FileSystem

_VERSION = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.M)
_CUDA = re.compile(r"""^cuda\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]""", re.M)
_PYTHON_DIR = re.compile(r"python(\d+\.\d+)")


@dataclass
class TorchInstall:
    """One torch package: where, which build, and the exact versions it expects of CUDA libraries."""

    site_dir: str  # image path of the site-packages/dist-packages directory
    version: str
    cuda: str | None
    pins: dict[str, str] = field(default_factory=dict)  # normalised dist name -> version specifier
    unresolved: list[str] = field(default_factory=list)  # requirements whose pins the image can't tell

    @property
    def torch_dir(self) -> str:
        return f"{self.site_dir}/torch"


def _metadata(fs: FileSystem, site_dir: str, dist: str) -> str | None:
    """METADATA text of an installed distribution in site_dir (dist-info names use '_')."""
    site = fs.lookup(site_dir.lstrip("/"))
    if site is None or site.kind != DIR or not site.children:
        return None
    prefix = canonicalize_name(dist).replace("-", "_") + "-"
    for name, child in site.children.items():
        if name.lower().startswith(prefix) and name.endswith(".dist-info") and child.children:
            meta = child.children.get("METADATA")
            if meta is not None and meta.content is not None:
                return meta.content.decode("utf-8", "replace")
    return None


def _requirements(metadata: str) -> list[Requirement]:
    reqs = []
    for line in metadata.splitlines():
        if line.lower().startswith("requires-dist:"):
            try:
                reqs.append(Requirement(line.split(":", 1)[1].strip()))
            except InvalidRequirement:
                continue
    return reqs


def _applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if req.marker is None:
        return True
    try:
        return any(req.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})
    except InvalidMarker:
        return False


def _pin(req: Requirement) -> str | None:
    """'9.24.0.43' for ==9.24.0.43, '13.1.1.3.*' for ==13.1.1.3.*, else the specifier text."""
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "==="):
        return specs[0].version
    return str(req.specifier) or None


def _pins(
    fs: FileSystem, site_dir: str, metadata: str, env: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    pins: dict[str, str] = {}
    unresolved: list[str] = []
    for req in _requirements(metadata):
        if not _applies(req, env, set()):
            continue
        name = canonicalize_name(req.name)
        if name == "cuda-toolkit" and req.extras:
            toolkit = _metadata(fs, site_dir, name)
            if toolkit is None:
                unresolved.append(str(req))
                continue
            for sub in _requirements(toolkit):
                if (
                    sub.marker is not None
                    and _applies(sub, env, set(req.extras))
                    and not _applies(sub, env, set())
                ):
                    pin = _pin(sub)
                    if pin:
                        pins[canonicalize_name(sub.name)] = pin
        elif name.startswith("nvidia-"):
            pin = _pin(req)
            if pin:
                pins[name] = pin
    return pins, unresolved


def find_torch(fs: FileSystem) -> list[TorchInstall]:
    """Every torch/version.py in the image (captured by the layer pass), sorted by path."""
    installs = []
    for path, entry in fs.walk():
        if not path.endswith("/torch/version.py") or entry.content is None:
            continue
        text = entry.content.decode("utf-8", "replace")
        version = _VERSION.search(text)
        if version is None:
            continue
        cuda = _CUDA.search(text)
        site_dir = "/" + path[: -len("/torch/version.py")]
        python = _PYTHON_DIR.search(site_dir)
        env = {
            "platform_system": "Linux",
            "sys_platform": "linux",
            "platform_machine": "x86_64",
            "python_version": python.group(1) if python else "3.11",
            "os_name": "posix",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
        }
        install = TorchInstall(site_dir, version.group(1), cuda.group(1) if cuda else None)
        metadata = _metadata(fs, site_dir, "torch")
        if metadata is not None:
            install.pins, install.unresolved = _pins(fs, site_dir, metadata, env)
        installs.append(install)
    return installs

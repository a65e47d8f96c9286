"""Run every cataloger over a merged image: the OS identity, the installed packages, and what went wrong."""

from __future__ import annotations

from collections.abc import Callable

from imgscan.catalog.apk import catalog_apk
from imgscan.catalog.common import Context
from imgscan.catalog.conda import catalog_conda
from imgscan.catalog.dpkg import catalog_dpkg
from imgscan.catalog.model import OsRelease, Package
from imgscan.catalog.osrelease import os_release
from imgscan.catalog.python import catalog_python
from imgscan.catalog.rpm import catalog_rpm
from imgscan.layers.fsview import FileSystem

CATALOGERS: dict[str, Callable[[Context], list[Package]]] = {
    "dpkg": catalog_dpkg,
    "apk": catalog_apk,
    "rpm": catalog_rpm,
    "python": catalog_python,
    "conda": catalog_conda,
}


def sort_key(p: Package) -> tuple[str, str, str, str]:
    return (p.ecosystem, p.name, p.version, p.location)


def catalog_image(fs: FileSystem) -> tuple[OsRelease | None, list[Package], list[str]]:
    """(os-release, packages sorted by ecosystem, name, version, location, warnings).

    Each cataloger handles the corruption it knows (a warning, then the next entry). The boundary below is
    for what it does not: a hostile image must cost one cataloger's results and a warning, never the run.
    """
    os = os_release(fs)
    ctx = Context.of(fs, os)
    packages: list[Package] = []
    for name, cataloger in CATALOGERS.items():
        try:
            packages += cataloger(ctx)
        except Exception as e:  # see the docstring
            ctx.warnings.add(f"{name}: cataloger failed", f"{type(e).__name__}: {e}")
    packages.sort(key=sort_key)
    return os, packages, ctx.warnings.lines()

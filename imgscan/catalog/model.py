"""What a cataloger reports: installed packages with the files they own, and the OS identity."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Package:
    """One installed package.

    ecosystem: 'deb', 'apk', 'rpm', 'python', 'conda'. location: the database or metadata file it was
    read from (image path). files: image paths the package owns (from dpkg .list, RECORD, ...), absolute.
    depends: names of packages it depends on (dpkg Depends, Requires-Dist), as the ecosystem names them.
    """

    name: str
    version: str
    ecosystem: str
    purl: str
    location: str
    layer: int | None = None
    licenses: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)


@dataclass
class OsRelease:
    """/etc/os-release (or /usr/lib/os-release): the distro the image is built on."""

    id: str
    version_id: str | None
    name: str | None
    pretty_name: str | None
    version_codename: str | None = None
    id_like: list[str] = field(default_factory=list)

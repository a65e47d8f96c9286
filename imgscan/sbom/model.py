"""The SBOM as plain data, independent of format, so CycloneDX and SPDX say the same thing.

Everything is sorted and holds no host path or time, so the same image gives the same model; its
fingerprint names the document (CycloneDX serialNumber, SPDX namespace) in every format.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field

# Item kinds: the CycloneDX component types they become.
OS = "operating-system"
PACKAGE = "package"
LIBRARY = "library"
APPLICATION = "application"

NS = "imgscan:"  # property namespace


@dataclass(frozen=True)
class ImageInfo:
    """The image the SBOM describes. digest: manifest digest (OCI), image ID (docker-archive), file sha256
    (SIF), None (a directory)."""

    ref: str
    name: str
    digest: str | None
    purl: str | None
    properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Item:
    """One component. parent: the package whose files include this one (an owned library)."""

    ref: str
    kind: str
    name: str
    version: str | None = None
    purl: str | None = None
    description: str | None = None
    licenses: list[str] = field(default_factory=list)
    sha256: str | None = None
    parent: str | None = None
    properties: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Sbom:
    """items sorted by ref; depends: ref -> sorted refs (the image's ref included); properties: facts about
    the whole image (CUDA findings, torch installs)."""

    tool_version: str
    image: ImageInfo
    items: list[Item]
    depends: dict[str, list[str]]
    properties: list[tuple[str, str]]

    def fingerprint(self) -> str:
        """sha256 of the model: equal models give equal document identities, different ones never do."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def document_uuid(self) -> uuid.UUID:
        """The document's identity (CycloneDX serialNumber, SPDX namespace): the same image gives the same
        one, and any difference in what the SBOM says gives another."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"urn:imgscan:sbom:{self.fingerprint()}")

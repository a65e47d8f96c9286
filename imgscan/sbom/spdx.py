"""The SBOM model as SPDX 2.3 JSON, through spdx-tools' model and JSON converter.

SPDX 2.3 requires a SHA-1 for a File element and imgscan keeps only SHA-256 of ELF files, so an ELF object
is a Package with primaryPackagePurpose LIBRARY/APPLICATION and filesAnalyzed false. Containment (image ->
top-level components, package -> owned library) is CONTAINS; package metadata and linker edges are
DEPENDS_ON. SPDX has no properties: imgscan's go in each package's comment, one 'name: value' per line.
SPDX requires a creation time: without --timestamp it is the Unix epoch, so the bytes stay reproducible.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime

from license_expression import LicenseExpression
from spdx_tools.common.spdx_licensing import spdx_licensing
from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
from spdx_tools.spdx.model import (
    Actor,
    ActorType,
    Checksum,
    ChecksumAlgorithm,
    CreationInfo,
    Document,
    ExternalPackageRef,
    ExternalPackageRefCategory,
    ExtractedLicensingInfo,
    Package,
    PackagePurpose,
    Relationship,
    RelationshipType,
    SpdxNoAssertion,
)

from imgscan.sbom.model import APPLICATION, LIBRARY, OS, Item, Sbom

EPOCH = datetime(1970, 1, 1)
_PURPOSE = {
    OS: PackagePurpose.OPERATING_SYSTEM,
    LIBRARY: PackagePurpose.LIBRARY,
    APPLICATION: PackagePurpose.APPLICATION,
}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_LICENSE_REF = re.compile(r"LicenseRef-[A-Za-z0-9.-]+")


def _readable(name: str) -> str:
    return _ID_UNSAFE.sub("-", name.replace("+", "-plus")).strip("-")[:48] or "x"


def spdx_id(ref: str, name: str) -> str:
    """SPDXRef-<readable name>-<hash of the bom-ref>: stable, unique, and within SPDX's character set."""
    return f"SPDXRef-{_readable(name)}-{hashlib.sha256(ref.encode()).hexdigest()[:12]}"


def _is_spdx(text: str) -> bool:
    """Only SPDX license list ids, operators and exceptions (no LicenseRef, which needs declaring)."""
    try:
        info = spdx_licensing.validate(text)
    except Exception:  # license_expression itself fails on some malformed input (an AttributeError)
        return False
    return not info.errors and not info.invalid_symbols


class _Licenses:
    """SPDX license expressions of the document; free text becomes a LicenseRef kept in the document."""

    def __init__(self) -> None:
        self.extracted: dict[str, ExtractedLicensingInfo] = {}

    def _one(self, text: str) -> str:
        if _is_spdx(text):
            return text
        license_id = text if _LICENSE_REF.fullmatch(text) else "LicenseRef-" + _readable(text)
        known = self.extracted.get(license_id)
        if known is not None and known.extracted_text != text:  # two texts that read alike once made safe
            license_id += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
        self.extracted[license_id] = ExtractedLicensingInfo(
            license_id=license_id, extracted_text=text, license_name=text
        )
        return license_id

    def expression(self, texts: list[str]) -> LicenseExpression | SpdxNoAssertion:
        if not texts:
            return SpdxNoAssertion()
        parts = [self._one(t) for t in texts]
        return spdx_licensing.parse(parts[0] if len(parts) == 1 else " AND ".join(f"({p})" for p in parts))


def _comment(properties: list[tuple[str, str]]) -> str | None:
    return "\n".join(f"{name}: {value}" for name, value in properties) or None


def _purl_ref(purl: str | None) -> list[ExternalPackageRef]:
    return [ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)] if purl else []


def _package(item: Item, ident: str, licenses: _Licenses) -> Package:
    path = next((value for name, value in item.properties if name == "imgscan:path"), None)
    return Package(
        spdx_id=ident,
        name=item.name,
        download_location=SpdxNoAssertion(),
        version=item.version,
        file_name=path,
        files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA256, item.sha256)] if item.sha256 else [],
        license_concluded=SpdxNoAssertion(),
        license_declared=licenses.expression(item.licenses),
        description=item.description,
        comment=_comment(item.properties),
        external_references=_purl_ref(item.purl),
        primary_package_purpose=_PURPOSE.get(item.kind),
    )


def _image_package(sbom: Sbom, ident: str) -> Package:
    image = sbom.image
    return Package(
        spdx_id=ident,
        name=image.name,
        download_location=SpdxNoAssertion(),
        version=image.digest,
        files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA256, image.digest.removeprefix("sha256:"))]
        if image.digest
        else [],
        comment=_comment(image.properties + sbom.properties),
        external_references=_purl_ref(image.purl),
        primary_package_purpose=PackagePurpose.CONTAINER,
    )


def spdx_document(sbom: Sbom, timestamp: datetime | None) -> Document:
    ids = {item.ref: spdx_id(item.ref, item.name) for item in sbom.items}
    ids[sbom.image.ref] = spdx_id(sbom.image.ref, sbom.image.name)
    licenses = _Licenses()
    packages = [_image_package(sbom, ids[sbom.image.ref])]
    packages += [_package(item, ids[item.ref], licenses) for item in sbom.items]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, ids[sbom.image.ref])]
    relationships += [
        Relationship(ids[item.parent], RelationshipType.CONTAINS, ids[item.ref])
        for item in sbom.items
        if item.parent
    ]
    for ref, targets in sbom.depends.items():
        kind = RelationshipType.CONTAINS if ref == sbom.image.ref else RelationshipType.DEPENDS_ON
        relationships += [Relationship(ids[ref], kind, ids[t]) for t in targets]
    creation = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=sbom.image.name,
        document_namespace=f"https://spdx.org/spdxdocs/imgscan-{_readable(sbom.image.name)}-{sbom.document_uuid()}",
        creators=[Actor(ActorType.TOOL, f"imgscan-{sbom.tool_version}")],
        created=timestamp or EPOCH,
        creator_comment=None
        if timestamp
        else "no creation time recorded (imgscan sbom --timestamp records one): created is the Unix epoch",
    )
    return Document(
        creation,
        packages=packages,
        relationships=sorted(
            relationships,
            key=lambda r: (r.spdx_element_id, r.relationship_type.name, r.related_spdx_element_id),
        ),
        extracted_licensing_info=sorted(licenses.extracted.values(), key=lambda e: e.license_id or ""),
    )


def spdx_text(sbom: Sbom, timestamp: datetime | None) -> str:
    """The document as JSON. spdx-tools' validator is not run here: it is quadratic in the relationships
    (5 s for a debootstrap image's 800 packages), so the tests run it instead, on real images."""
    return json.dumps(DocumentConverter().convert(spdx_document(sbom, timestamp)), indent=2) + "\n"

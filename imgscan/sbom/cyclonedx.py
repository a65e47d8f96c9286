"""The SBOM model as CycloneDX 1.5/1.6 JSON or XML, through cyclonedx-python-lib (which sorts components,
properties and dependencies, so the bytes depend only on the model)."""

from __future__ import annotations

from datetime import datetime

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.dependency import Dependency
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from cyclonedx.spdx import fixup_id, is_expression
from packageurl import PackageURL

from imgscan.sbom.model import APPLICATION, LIBRARY, OS, PACKAGE, Item, Sbom

_SCHEMAS = {"1.6": SchemaVersion.V1_6, "1.5": SchemaVersion.V1_5}
_TYPES = {
    OS: ComponentType.OPERATING_SYSTEM,
    PACKAGE: ComponentType.LIBRARY,
    LIBRARY: ComponentType.LIBRARY,
    APPLICATION: ComponentType.APPLICATION,
}


class _VerbatimPurl(PackageURL):
    """A purl written exactly as the cataloger wrote it (syft's encoding), not re-encoded by packageurl."""

    text: str

    def __new__(cls, text: str) -> _VerbatimPurl:
        self = super().__new__(cls, **PackageURL.from_string(text).to_dict())
        self.text = text
        return self

    def to_string(self, *args: object, **kwargs: object) -> str:
        return self.text


def _licenses(texts: list[str]) -> list[LicenseExpression | DisjunctiveLicense]:
    """CycloneDX allows one expression alone or a list of licenses, never both: several SPDX expressions
    are ANDed into one (as syft does); free text among them turns every entry into a named license."""
    ids = [fixup_id(t) for t in texts]
    if len(texts) == 1 and ids[0] is None and is_expression(texts[0]):
        return [LicenseExpression(texts[0])]
    if all(i is not None or is_expression(t) for i, t in zip(ids, texts, strict=True)) and any(
        i is None for i in ids
    ):
        return [LicenseExpression(" AND ".join(f"({t})" for t in texts))]
    return [
        DisjunctiveLicense(id=i) if i else DisjunctiveLicense(name=t) for i, t in zip(ids, texts, strict=True)
    ]


def _properties(pairs: list[tuple[str, str]]) -> list[Property]:
    return [Property(name=name, value=value) for name, value in pairs]


def _component(item: Item) -> Component:
    return Component(
        type=_TYPES[item.kind],
        name=item.name,
        version=item.version,
        bom_ref=item.ref,
        purl=_VerbatimPurl(item.purl) if item.purl else None,
        description=item.description,
        licenses=_licenses(item.licenses),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=item.sha256)] if item.sha256 else None,
        properties=_properties(item.properties),
    )


def _image_component(sbom: Sbom) -> Component:
    image = sbom.image
    return Component(
        type=ComponentType.CONTAINER,
        name=image.name,
        version=image.digest,
        bom_ref=image.ref,
        purl=PackageURL.from_string(image.purl) if image.purl else None,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=image.digest.removeprefix("sha256:"))]
        if image.digest
        else None,
        properties=_properties(image.properties),
    )


def cyclonedx_bom(sbom: Sbom, timestamp: datetime | None) -> Bom:
    """Owned libraries nested in their package's components; dependencies from the model."""
    components = {item.ref: _component(item) for item in sbom.items}
    bom = Bom(serial_number=sbom.document_uuid())
    for item in sbom.items:
        parent = components[item.parent].components if item.parent else bom.components
        parent.add(components[item.ref])
    image = _image_component(sbom)
    components[image.bom_ref.value] = image
    bom.metadata.component = image
    bom.metadata.timestamp = timestamp  # None leaves it out: the same image gives the same bytes
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="imgscan", version=sbom.tool_version)
    )
    bom.metadata.properties.update(_properties(sbom.properties))
    bom.dependencies.update(  # Bom.register_dependency searches linearly: quadratic on real images
        Dependency(components[ref].bom_ref, [Dependency(components[t].bom_ref) for t in targets])
        for ref, targets in sbom.depends.items()
    )
    return bom


def cyclonedx_text(sbom: Sbom, xml: bool, spec_version: str, timestamp: datetime | None) -> str:
    outputter = make_outputter(
        cyclonedx_bom(sbom, timestamp),
        OutputFormat.XML if xml else OutputFormat.JSON,
        _SCHEMAS[spec_version],
    )
    return outputter.output_as_string(indent=2) + "\n"

"""The judges of an SBOM file: cyclonedx-python-lib's strict JSON or XML validator at the document's
version, or spdx-tools' full validator."""

from __future__ import annotations

from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from cyclonedx.validation.xml import XmlValidator
from spdx_tools.spdx.parser.json import json_parser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document


def assert_valid(path: Path, fmt: str = "cyclonedx-json", version: str | None = None) -> None:
    """The validator that fits the document: strict CycloneDX JSON or XML at its version, or spdx-tools'."""
    if fmt == "spdx-json":
        assert validate_full_spdx_document(json_parser.parse_from_file(str(path))) == []
        return
    schema = SchemaVersion.from_version(version or "1.6")
    validator = XmlValidator(schema) if fmt == "cyclonedx-xml" else JsonStrictValidator(schema)
    assert validator.validate_str(path.read_text()) is None

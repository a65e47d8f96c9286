"""One side of a diff: an SBOM file read back, or an image scanned and turned into the same SBOM model
`imgscan sbom` builds, rendered as CycloneDX JSON and read back by the same reader, so both kinds of side
become one summary by the same code."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from imgscan.catalog.catalog import catalog_image
from imgscan.cuda.report import cuda_report
from imgscan.errors import ImgscanError
from imgscan.layers.scan import MergedImage
from imgscan.linker.context import RunSettings
from imgscan.linker.report import Closures
from imgscan.sbom.build import build_sbom
from imgscan.sbom.output import render
from imgscan.sbom.read import is_cyclonedx, load_json, read_cyclonedx_json, summarize
from imgscan.sources.image import Image


@dataclass
class Side:
    """source: {kind: 'image'|'sbom', ref}; merged: the scanned image (None for an SBOM file)."""

    source: dict[str, str | None]
    summary: dict[str, Any]
    merged: MergedImage | None = None


def is_sbom_file(arg: str) -> bool:
    """A side is an SBOM when it is a regular file that parses as a CycloneDX JSON document (an image
    archive never does)."""
    if not os.path.isfile(arg):
        return False
    try:
        with open(arg, "rb") as f:
            if not f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):  # an archive: never parsed
                return False
        return is_cyclonedx(load_json(arg))
    except ImgscanError:  # unreadable or not JSON: an image reference, which says what is wrong
        return False
    except OSError:
        return False


def sbom_side(path: str) -> Side:
    return Side({"kind": "sbom", "ref": path}, read_cyclonedx_json(path))


def image_side(merged: MergedImage, settings: RunSettings) -> tuple[Side, list[str]]:
    """The image's summary and the warnings analysing it raised."""
    os_release, packages, warnings = catalog_image(merged.fs)
    report = cuda_report(merged.fs, packages, settings)
    closures = Closures(merged.fs, settings)
    document = build_sbom(merged, os_release, packages, report, closures)
    summary = summarize(json.loads(render(document, "cyclonedx-json")))
    source = {"kind": "image", "ref": merged.image.reference}
    return Side(source, summary, merged), warnings + closures.warnings


def shared_layers(images: list[Image]) -> frozenset[str]:
    """diff_ids present in more than one of the images: read once, kept in memory for the next image."""
    seen: dict[str, int] = {}
    for image in images:
        for diff_id in {ref.diff_id for ref in image.layers if ref.diff_id}:
            seen[diff_id] = seen.get(diff_id, 0) + 1
    return frozenset(d for d, n in seen.items() if n > 1)

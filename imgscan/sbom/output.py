"""Turn the SBOM model into the requested format and put it where asked, never leaving a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime

from imgscan.errors import ImgscanError
from imgscan.sbom.model import Sbom

FORMATS = ("cyclonedx-json", "cyclonedx-xml", "spdx-json")
SPEC_VERSIONS = ("1.6", "1.5")  # CycloneDX
DEFAULT_SPEC_VERSION = "1.6"


def render(sbom: Sbom, fmt: str, spec_version: str = DEFAULT_SPEC_VERSION, timestamp: bool = False) -> str:
    """The document text. Without timestamp no time is recorded, so the same image gives the same bytes.

    The writers are imported here: cyclonedx-python-lib and spdx-tools take ~0.6 s to import, which the
    commands that write no SBOM should not pay."""
    if spec_version not in SPEC_VERSIONS:
        raise ImgscanError(f"CycloneDX {spec_version} is not supported ({', '.join(SPEC_VERSIONS)})")
    now = datetime.now(UTC).replace(microsecond=0) if timestamp else None
    if fmt == "spdx-json":
        from imgscan.sbom.spdx import spdx_text

        return spdx_text(sbom, now)
    if fmt in ("cyclonedx-json", "cyclonedx-xml"):
        from imgscan.sbom.cyclonedx import cyclonedx_text

        return cyclonedx_text(sbom, fmt == "cyclonedx-xml", spec_version, now)
    raise ImgscanError(f"unknown SBOM format {fmt} ({', '.join(FORMATS)})")


def write_atomic(path: str, text: str) -> None:
    """Write a temp file beside path, then rename it over path: readers see the old file or the whole new
    one. The new file gets the mode a plain open() would give it."""
    directory = os.path.dirname(os.path.abspath(path))
    umask = os.umask(0)
    os.umask(umask)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise ImgscanError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:  # interrupted or failed: no temp file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ImgscanError(f"{path}: cannot write: {e.strerror or e}") from None
        raise

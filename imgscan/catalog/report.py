"""Plain-data views of a catalog for `imgscan packages` (a JSON-ready dict and table lines)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from imgscan.catalog.model import OsRelease, Package


def packages_data(os: OsRelease | None, packages: list[Package]) -> dict[str, Any]:
    """{'os': os-release fields or None, 'summary': {ecosystem: count}, 'packages': [every Package field]}."""
    return {
        "os": asdict(os) if os is not None else None,
        "summary": dict(sorted(Counter(p.ecosystem for p in packages).items())),
        "packages": [asdict(p) for p in packages],
    }


def packages_lines(data: dict[str, Any]) -> list[str]:
    """A table of NAME VERSION TYPE LOCATION under the OS line, as `syft -o table` lists packages."""
    os = data["os"]
    lines = [f"OS:  {(os['pretty_name'] or os['id']) if os else '-'}"]
    rows = [(p["name"], p["version"], p["ecosystem"], p["location"]) for p in data["packages"]]
    header = ("NAME", "VERSION", "TYPE", "LOCATION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3])
    counts = ", ".join(f"{n} {kind}" for kind, n in data["summary"].items())
    lines.append(f"{len(rows)} packages" + (f" ({counts})" if counts else ""))
    return lines

"""The diff as text: a rich table per section (the terminal) or markdown (PR comments)."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from imgscan.diff.compare import LD_LIBRARY_PATH

Rows = list[list[str]]


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _mapping_rows(what: str, mapping: dict[str, Any]) -> Rows:
    rows = [[f"{what} {k}", "-", _text(v)] for k, v in mapping["added"].items()]
    rows += [[f"{what} {k}", _text(v), "-"] for k, v in mapping["removed"].items()]
    rows += [[f"{what} {k}", _text(c["before"]), _text(c["after"])] for k, c in mapping["changed"].items()]
    return rows


def _image_rows(image: dict[str, Any]) -> Rows:
    rows = [
        [name, _text(image[key]["before"]), _text(image[key]["after"])]
        for name, key in (
            ("digest", "digest"),
            ("platform", "platform"),
            (LD_LIBRARY_PATH, "ld_library_path"),
        )
        if image[key]
    ]
    env = {part: {k: v for k, v in d.items() if k != LD_LIBRARY_PATH} for part, d in image["env"].items()}
    rows += _mapping_rows("Env", env)  # LD_LIBRARY_PATH has its own row above
    rows += [
        [key, _text(image[key]["before"]), _text(image[key]["after"])]
        for key in ("entrypoint", "cmd")
        if image[key]
    ]
    rows += _mapping_rows("label", image["labels"])
    layers = image["layers"]
    rows += [["layer", d, "-"] for d in layers["removed"]] + [["layer", "-", d] for d in layers["added"]]
    return rows


def _side(lib: dict[str, Any] | None) -> str:
    return "-" if lib is None else f"{lib['version'] or '?'} {lib['path'] or 'NOT FOUND'} [{lib['rule']}]"


def sections(result: dict[str, Any]) -> list[tuple[str, list[str], Rows]]:
    """(title, header, rows) of every section with a change; the same cells for both renderings."""
    torch_rows: Rows = []
    for t in result["torch"]:
        if t["version"]:
            torch_rows.append(
                [f"torch {t['path']}", _text(t["version"]["before"]), _text(t["version"]["after"])]
            )
        torch_rows += _mapping_rows("pin", t["pins"])
    packages = result["packages"]
    out = [
        ("Image", ["what", "before", "after"], _image_rows(result["image"])),
        (
            "CUDA stack",
            ["library", "before", "after"],
            [[c["name"], _side(c["before"]), _side(c["after"])] for c in result["cuda"]],
        ),
        ("torch", ["what", "before", "after"], torch_rows),
        (
            "Linkage",
            ["object", "needed", "before", "after"],
            [[r["object"], r["needed"], _text(r["before"]), _text(r["after"])] for r in result["linkage"]],
        ),
        (
            "Findings",
            ["", "finding"],
            [["new", f] for f in result["findings"]["new"]]
            + [["gone", f] for f in result["findings"]["gone"]],
        ),
        (
            "Packages",
            ["ecosystem", "name", "before", "after", "change"],
            [[p["ecosystem"], p["name"], "-", p["version"], "added"] for p in packages["added"]]
            + [[p["ecosystem"], p["name"], p["version"], "-", "removed"] for p in packages["removed"]]
            + [
                [p["ecosystem"], p["name"], p["before"], p["after"], p["change"]] for p in packages["changed"]
            ],
        ),
    ]
    if "files" in result:
        files = result["files"]
        out.append(
            (
                "Files",
                ["path", "change", "before", "after"],
                [[p, "added", "-", "-"] for p in files["added"]]
                + [[p, "removed", "-", "-"] for p in files["removed"]]
                + [[c["path"], "changed", _text(c["before"]), _text(c["after"])] for c in files["changed"]],
            )
        )
    return [s for s in out if s[2]]


def _title(result: dict[str, Any]) -> str:
    return f"{result['a']['ref']} -> {result['b']['ref']}"


def print_table(result: dict[str, Any], console: Console) -> None:
    console.print(_title(result))
    found = sections(result)
    if not found:
        console.print("No differences.")
    for title, header, rows in found:
        table = Table(*header, title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown(result: dict[str, Any]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"**imgscan diff** `{_title(result)}`", ""]
    found = sections(result)
    if not found:
        lines.append("No differences.")
    for title, header, rows in found:
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

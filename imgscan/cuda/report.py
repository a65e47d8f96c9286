"""Build the CUDA report for an image and render it (JSON, markdown, terminal table)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from imgscan.catalog.model import Package
from imgscan.cuda.families import FAMILIES, family_of
from imgscan.cuda.process import TorchProcess, torch_process
from imgscan.cuda.stack import (
    SEVERITIES,
    WARNING,
    CudaLibrary,
    Finding,
    copies_by_soname,
    findings_for,
    libraries_of,
    owner_index,
)
from imgscan.cuda.torch import find_torch
from imgscan.layers.entry import FILE, HARDLINK
from imgscan.layers.fsview import FileSystem
from imgscan.linker.context import RunSettings, build_context
from imgscan.linker.search import Process

_TORCH_LINKED = re.compile(r"lib(torch|c10)[\w-]*\.so|libcudart\.so(\.\d+)*")


@dataclass
class CudaReport:
    torch: list[dict[str, Any]] = field(default_factory=list)
    libraries: list[CudaLibrary] = field(default_factory=list)
    extensions: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def _extensions(fs: FileSystem, tp: TorchProcess) -> list[str]:
    """ELF files outside torch's own directory that link torch, c10 or cudart (torchvision, user ops)."""
    torch_dir = tp.install.torch_dir + "/"
    return [
        "/" + path
        for path, entry in fs.walk()
        if entry.kind in (FILE, HARDLINK)
        and entry.elf is not None
        and entry.elf.dynamic
        and not ("/" + path).startswith(torch_dir)
        and any(_TORCH_LINKED.fullmatch(n) for n in entry.elf.needed)
    ]


def _extension_findings(
    fs: FileSystem,
    tp: TorchProcess,
    libraries: list[CudaLibrary],
    settings: RunSettings,
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Each extension loaded on its own (as `ld.so --list` does): a CUDA library it would take from another
    copy than torch's process means the import order decides which one a program gets."""
    loaded = {lib.soname: lib.realpath for lib in libraries}
    rows, findings = [], []
    for path in _extensions(fs, tp):
        entry = fs.lookup(path.lstrip("/"))
        assert entry is not None and entry.elf is not None
        closure = Process(fs, build_context(fs, entry.elf, settings), path, entry, as_listed=True).closure()
        cuda = [e for e in closure.loads if family_of(e.name)]
        rows.append(
            {"path": path, "loads": [{"name": e.name, "realpath": e.realpath, "rule": e.rule} for e in cuda]}
        )
        for e in cuda:
            ours = loaded.get(e.name)
            if ours and e.realpath and e.realpath != ours:
                findings.append(
                    Finding(
                        "cuda.extension-other-copy",
                        WARNING,
                        f"{path} alone loads {e.name} from {e.realpath} ({e.rule}); torch's process "
                        f"loads {ours}: import order decides",
                        [path, e.realpath, ours],
                    )
                )
    return rows, findings


def cuda_report(fs: FileSystem, packages: list[Package], settings: RunSettings) -> CudaReport:
    report = CudaReport()
    owners = owner_index(fs, packages)
    copies = copies_by_soname(fs)
    for install in find_torch(fs):
        tp = torch_process(fs, install, settings)
        libraries = libraries_of(fs, tp, owners, copies)
        report.torch.append(
            {
                "path": install.torch_dir,
                "version": install.version,
                "cuda": install.cuda,
                "pins": install.pins,
                "unresolved_pins": install.unresolved,
                "interpreter": tp.interpreter,
                "resolution": "python-process" if tp.interpreter else "each-library-alone",
            }
        )
        rows, ext_findings = _extension_findings(fs, tp, libraries, settings)
        report.extensions += rows
        report.libraries += libraries
        report.findings += findings_for(tp, libraries) + ext_findings
    report.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.id, f.message))
    return report


def report_data(report: CudaReport) -> dict[str, Any]:
    return {
        "torch": report.torch,
        "libraries": [asdict(lib) for lib in report.libraries],
        "extensions": report.extensions,
        "findings": [asdict(f) for f in report.findings],
    }


def worst_severity(report: CudaReport) -> str | None:
    return max((f.severity for f in report.findings), key=SEVERITIES.index, default=None)


def table_rows(report: CudaReport) -> list[list[str]]:
    """One row per library (cuDNN sub-libraries folded into their front library unless they differ)."""
    rows = []
    front = {lib.name: lib for lib in report.libraries}
    for lib in report.libraries:
        if (
            lib.name.startswith("cudnn_")
            and front.get("cudnn")
            and front["cudnn"].realpath
            and lib.realpath
            and lib.realpath.rsplit("/", 1)[0] == front["cudnn"].realpath.rsplit("/", 1)[0]
        ):
            continue
        evidence = lib.evidence[0] if lib.evidence else None
        rows.append(
            [
                lib.name,
                lib.version or "?",
                lib.realpath or "NOT FOUND",
                lib.rule,
                f"L{lib.layer}" if lib.layer is not None else "-",
                f"{evidence.source} ({evidence.confidence})" if evidence else "-",
                str(len(lib.shadowed) or ""),
            ]
        )
    rows.sort(key=lambda r: (FAMILIES.index(r[0]) if r[0] in FAMILIES else len(FAMILIES), r[0]))
    return rows


TABLE_HEADER = ["library", "version", "loaded from", "rule", "layer", "evidence", "shadows"]


def markdown(report: CudaReport) -> str:
    lines = []
    for t in report.torch:
        lines.append(
            f"**torch {t['version']}** (CUDA {t['cuda']}) at `{t['path']}`, resolved as "
            f"{'`' + t['interpreter'] + '`' if t['interpreter'] else 'each library alone (no interpreter)'}"
        )
    lines += ["", "| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(report)
    ]
    lines += ["", "**Findings**", ""]
    lines += [f"- **{f.severity}** `{f.id}`: {f.message}" for f in report.findings] or ["- none"]
    return "\n".join(lines)

"""Benchmark: reading (soname, needed, rpath, runpath) with pyelftools, LIEF and imgscan's stream scanner.

Prints one markdown table: time and peak RSS for the real libtorch_cuda.so (500 MB) and for the first 1000
.so files of /usr/lib/x86_64-linux-gnu. Each (reader, target) runs in a fresh interpreter; time excludes
the interpreter start and imports, peak RSS is the worker's ru_maxrss (the "before" column is its RSS
after the imports). The agree column checks that every reader returned the same four facts.

    python3 benchmarks/bench_elf.py [--torch PATH/libtorch_cuda.so] [--count 1000]

Without --torch, libtorch_cuda.so is copied out of the torch wheel (pip finds it locally) into a temp file,
because pyelftools and LIEF need a file on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TORCH = "torch==2.14.1"
MEMBER = "torch/lib/libtorch_cuda.so"
WHEELS = Path.home() / ".cache" / "imgscan-tests" / "wheels"
SMALL_ROOT = "/usr/lib/x86_64-linux-gnu"

Facts = tuple[str | None, list[str], str | None, str | None]
READERS = {
    "pyelftools, file on disk": "pyelftools",
    "lief.parse, file on disk": "lief-disk",
    "lief, ParserConfig minimal, file on disk": "lief-minimal",
    "lief.parse, bytes in memory": "lief-bytes",
    "imgscan ElfScanner, stream (with probes)": "imgscan",
    "imgscan ElfScanner, stream (no probes)": "imgscan-noprobes",
}


# -- workers (one per fresh interpreter) -------------------------------------------------------------------


def _pyelftools() -> Callable[[str], Facts]:
    from elftools.elf.elffile import ELFFile

    def read(path: str) -> Facts:
        soname = rpath = runpath = None
        needed: list[str] = []
        with open(path, "rb") as f:
            for seg in ELFFile(f).iter_segments():
                if seg["p_type"] != "PT_DYNAMIC":
                    continue
                for tag in seg.iter_tags():
                    kind = tag.entry.d_tag
                    if kind == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif kind == "DT_SONAME":
                        soname = tag.soname
                    elif kind == "DT_RPATH":
                        rpath = tag.rpath
                    elif kind == "DT_RUNPATH":
                        runpath = tag.runpath
        return soname, needed, rpath, runpath

    return read


def _lief(mode: str) -> Callable[[str], Facts]:
    import lief

    lief.logging.disable()
    config = lief.ELF.ParserConfig()
    for flag in ("parse_relocations", "parse_dyn_symbols", "parse_symtab_symbols", "parse_symbol_versions"):
        setattr(config, flag, False)
    config.parse_notes = config.parse_overlay = False

    def read(path: str) -> Facts:
        if mode == "lief-bytes":
            with open(path, "rb") as f:
                binary = lief.parse(f.read())
        elif mode == "lief-minimal":
            binary = lief.ELF.parse(path, config)
        else:
            binary = lief.parse(path)
        soname = rpath = runpath = None
        needed: list[str] = []
        for entry in binary.dynamic_entries:
            if isinstance(entry, lief.ELF.DynamicEntryLibrary):
                needed.append(entry.name)
            elif isinstance(entry, lief.ELF.DynamicSharedObject):
                soname = entry.name
            elif isinstance(entry, lief.ELF.DynamicEntryRpath):
                rpath = entry.rpath
            elif isinstance(entry, lief.ELF.DynamicEntryRunPath):
                runpath = entry.runpath
        return soname, needed, rpath, runpath

    return read


def _imgscan(probes: bool) -> Callable[[str], Facts]:
    from imgscan.elf.scan import DEFAULT_PROBES, read_elf_file

    def read(path: str) -> Facts:
        facts = read_elf_file(path, DEFAULT_PROBES if probes else ())
        assert facts is not None and facts.complete, (path, facts)
        join = ":".join
        return (
            facts.soname,
            facts.needed,
            None if facts.rpath is None else join(facts.rpath),
            None if facts.runpath is None else join(facts.runpath),
        )

    return read


def worker(reader: str, list_file: str) -> None:
    """Reads every path listed; prints seconds, RSS before and peak, and a digest of the facts."""
    paths = Path(list_file).read_text().split("\n")
    if reader == "pyelftools":
        read = _pyelftools()
    elif reader.startswith("lief"):
        read = _lief(reader)
    else:
        read = _imgscan(reader == "imgscan")
    status = Path("/proc/self/status").read_text().splitlines()
    before = int(next(line for line in status if line.startswith("VmRSS")).split()[1])
    start = time.perf_counter()
    results = [read(p) for p in paths]
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(json.dumps(results).encode()).hexdigest()[:12]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "before_kb": before, "peak_kb": peak, "digest": digest}))


# -- driver --------------------------------------------------------------------------------------------------


def small_libraries(count: int) -> list[str]:
    paths: list[str] = []
    for dirpath, dirnames, names in os.walk(SMALL_ROOT):
        dirnames.sort()
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            if ".so" in name and os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        paths.append(path)
    return sorted(paths)[:count]


def torch_from_wheel(out: Path) -> Path:
    """Streams the member out of the cached wheel (downloading the wheel once)."""
    wheels = sorted(WHEELS.glob("torch-2.14.1-*.whl"))
    if not wheels:
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["pip", "download", "-q", "--no-deps", TORCH, "-d", str(WHEELS)], check=True)
        wheels = sorted(WHEELS.glob("torch-2.14.1-*.whl"))
    target = out / "libtorch_cuda.so"
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def run_worker(reader: str, list_file: Path) -> dict[str, float | str]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", reader, str(list_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch", help="path of libtorch_cuda.so (default: from the torch wheel)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--worker", nargs=2, metavar=("READER", "LIST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch = Path(args.torch) if args.torch else torch_from_wheel(work)
        small = small_libraries(args.count)
        targets = {
            f"libtorch_cuda.so ({torch.stat().st_size >> 20} MB)": [str(torch)],
            f"first {len(small)} .so files ({sum(os.path.getsize(p) for p in small) >> 20} MB)": small,
        }
        print("| target | reader | time (s) | peak RSS (MB) | RSS before (MB) | agree |")
        print("|---|---|---:|---:|---:|---|")
        for label, paths in targets.items():
            list_file = work / "paths.txt"
            list_file.write_text("\n".join(paths))
            rows = {name: run_worker(reader, list_file) for name, reader in READERS.items()}
            digests = {row["digest"] for row in rows.values()}
            for name, row in rows.items():
                agree = "yes" if len(digests) == 1 else str(row["digest"])
                print(
                    f"| {label} | {name} | {row['seconds']:.2f} | {float(row['peak_kb']) / 1024:.0f} "
                    f"| {float(row['before_kb']) / 1024:.0f} | {agree} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

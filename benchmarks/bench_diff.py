"""Benchmark: `imgscan diff` of two images sharing a base vs scanning one, and the layer cache.

The base is bench_read.py's torch image (Debian minbase + the torch 2.14.1 wheel); the second image adds
one small layer (a file and an Env change) with umoci, cached under ~/.cache/imgscan-bench. Shared layers
are read once per diff run even without --layer-cache; with a warm cache none is read.

    python3 benchmarks/bench_diff.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_read import CACHE, build_image
from benchmarks.measure import measure, print_table

TAG = "torch-extra"


def build_second(base_ref: str) -> str:
    """The base image plus one layer holding one small file, tagged TAG in the same layout."""
    layout = base_ref.removeprefix("oci-dir:").rsplit(":", 1)[0]
    ref = f"oci-dir:{layout}:{TAG}"
    listed = subprocess.run(["umoci", "ls", "--layout", layout], capture_output=True, text=True, check=True)
    if TAG in listed.stdout.split():
        return ref
    work = Path(tempfile.mkdtemp(dir=CACHE))
    try:
        bundle = work / "bundle"
        base_tag = base_ref.rsplit(":", 1)[1]
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:{base_tag}", str(bundle)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (bundle / "rootfs" / "etc" / "imgscan-bench-extra").write_text("one small extra layer\n")
        subprocess.run(["umoci", "repack", "--image", f"{layout}:{TAG}", str(bundle)], check=True)
        subprocess.run(
            ["umoci", "config", "--image", f"{layout}:{TAG}", "--config.env", "LD_LIBRARY_PATH=/opt/extra"],
            check=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ref


def main() -> None:
    base = build_image()
    second = build_second(base)
    imgscan = [sys.executable, "-m", "imgscan"]
    layer_cache = Path(tempfile.mkdtemp(prefix="imgscan-layer-cache-"))
    try:
        runs = {
            "imgscan sbom (one image)": measure([*imgscan, "sbom", base, "-o", os.devnull]),
            "imgscan diff (shared base read once)": measure([*imgscan, "diff", base, second, "--json"]),
            "imgscan diff --layer-cache (cold)": measure(
                [*imgscan, "diff", base, second, "--json", "--layer-cache", str(layer_cache)]
            ),
            "imgscan diff --layer-cache (warm)": measure(
                [*imgscan, "diff", base, second, "--json", "--layer-cache", str(layer_cache)]
            ),
        }
        cache_mb = sum(p.stat().st_size for p in layer_cache.iterdir()) / 2**20
    finally:
        shutil.rmtree(layer_cache, ignore_errors=True)
    print(f"images: {base} vs {second}  cores: {os.cpu_count()}  layer cache size: {cache_mb:.0f} MiB")
    print()
    print_table(runs, per_process=False)


if __name__ == "__main__":
    main()

"""Benchmark: `imgscan ldd --all` and `imgscan cuda` on the real torch 2.14.1 + nvidia wheels image.

Prints one markdown table: wall time and peak RSS of `imgscan ls REF -R` (reading the layers alone, the
floor of anything that looks at files), `imgscan ldd REF --all --json` (every ELF object's closure) and
`imgscan cuda REF --json` (torch's process, versions, findings), on the 'pip' image of tests/cuda_images.py:
debootstrap + the nvidia wheels torch pins + torch + Debian's python3.11, 4 gzip layers, ~3 GB compressed.
The image is built and cached under ~/.cache/imgscan-tests when absent (needs root, umoci, pip, apt-get).

    python3 benchmarks/bench_ldd.py [--image oci-dir:PATH:TAG] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_read import layer_blobs
from benchmarks.measure import Measurement, measure


def build_ref() -> str:
    """The pip image of tests/cuda_images.py (cached; about 6 min to build once, more without torch's)."""
    from tests.cuda_images import build_cuda_images
    from tests.imagebuild import debootstrap_tarball

    work = Path(tempfile.mkdtemp(prefix="imgscan-bench-ldd-"))
    return build_cuda_images(debootstrap_tarball(), work).pip.ref


def interleaved(commands: dict[str, list[str]], repeat: int) -> dict[str, list[Measurement]]:
    """Every command once per round, `repeat` rounds: a noisy neighbour slows all of them alike."""
    runs: dict[str, list[Measurement]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            runs[name].append(measure(cmd))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="an oci-dir: reference; default: the cached pip torch image")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over the commands; the fastest is shown"
    )
    args = parser.parse_args()
    ref = args.image or build_ref()
    blobs = layer_blobs(ref)
    compressed = sum(b.stat().st_size for b in blobs)
    imgscan = [sys.executable, "-m", "imgscan"]
    commands = {
        "imgscan ls REF -R (read alone)": [*imgscan, "ls", ref, "-R"],
        "imgscan ldd REF --all --json": [*imgscan, "ldd", ref, "--all", "--json"],
        "imgscan cuda REF --json": [*imgscan, "cuda", ref, "--json"],
    }
    runs = interleaved(commands, args.repeat)
    floor = min(m.seconds for m in next(iter(runs.values())))
    print(
        f"image: {ref}  layers: {len(blobs)}  compressed: {compressed / 2**20:.0f} MiB  "
        f"cores: {os.cpu_count()}  runs per command: {args.repeat}"
    )
    print()
    print("| command | wall s (fastest) | over the read (s) | peak RSS, largest process (MB) | tree (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, ms in runs.items():
        fastest = min(m.seconds for m in ms)
        failed = [m.returncode for m in ms if m.returncode != 0]
        status = f" (exit {failed[0]})" if failed else ""
        spread = f" (median {statistics.median(m.seconds for m in ms):.1f})" if len(ms) > 1 else ""
        print(
            f"| {name}{status} | {fastest:.1f}{spread} | {fastest - floor:+.1f} | "
            f"{max(m.max_process_rss_mb for m in ms):.0f} | {max(m.max_tree_rss_mb for m in ms):.0f} |"
        )


if __name__ == "__main__":
    main()

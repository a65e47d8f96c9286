"""Benchmark: reading a >= 1 GB image (Debian minbase + the real torch 2.14.1 wheel) with imgscan and syft.

Prints one markdown table: wall time and peak RSS of `imgscan inspect`, `imgscan ls -R`, `syft` on the same
OCI layout, beside the floor: the time to merely decompress the layers (Python zlib, gzip -dc).
The image is built once (umoci, from the cached debootstrap rootfs and the torch wheel that pip finds
locally) and cached under ~/.cache/imgscan-bench keyed by its inputs.

    python3 benchmarks/bench_read.py [--image oci-dir:PATH:TAG]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import measure, print_table
from tests.imagebuild import debootstrap_tarball, extract_tarball

TORCH = "torch==2.14.1"
CACHE = Path.home() / ".cache" / "imgscan-bench"
SITE = "usr/local/lib/python3.11/dist-packages"


def build_image() -> str:
    """OCI layout with two gzip layers: the rootfs, then torch unpacked into dist-packages."""
    layout = CACHE / "torch-oci-v1"
    if (layout / "index.json").exists():
        return f"oci-dir:{layout}:torch"
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=CACHE))
    try:
        subprocess.run(["pip", "download", "-q", "--no-deps", TORCH, "-d", str(work / "wheel")], check=True)
        tmp_layout = work / "oci"
        subprocess.run(["umoci", "init", "--layout", str(tmp_layout)], check=True)
        subprocess.run(["umoci", "new", "--image", f"{tmp_layout}:torch"], check=True)
        bundle = work / "bundle"
        subprocess.run(
            ["umoci", "unpack", "--image", f"{tmp_layout}:torch", str(bundle)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(bundle / "rootfs")
        extract_tarball(debootstrap_tarball(), bundle / "rootfs")
        subprocess.run(["umoci", "repack", "--image", f"{tmp_layout}:torch", str(bundle)], check=True)
        shutil.rmtree(bundle)
        subprocess.run(
            ["umoci", "unpack", "--image", f"{tmp_layout}:torch", str(bundle)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        site = bundle / "rootfs" / SITE
        site.mkdir(parents=True, exist_ok=True)
        wheel = next((work / "wheel").glob("torch-*.whl"))
        subprocess.run(["python3", "-m", "zipfile", "-e", str(wheel), str(site)], check=True)
        subprocess.run(["umoci", "repack", "--image", f"{tmp_layout}:torch", str(bundle)], check=True)
        subprocess.run(["umoci", "gc", "--layout", str(tmp_layout)], check=True)
        tmp_layout.rename(layout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return f"oci-dir:{layout}:torch"


def single_image_layout(ref: str) -> Path:
    """A layout holding only ref's image (blobs hard-linked, nothing copied): the benchmark layout may also
    hold bench_diff.py's second image, and syft's oci-dir reads only single-image layouts."""
    layout, tag = ref.removeprefix("oci-dir:").rsplit(":", 1)
    single = CACHE / f"single-{tag}"
    shutil.rmtree(single, ignore_errors=True)
    (single / "blobs" / "sha256").mkdir(parents=True)
    for blob in (Path(layout) / "blobs" / "sha256").iterdir():
        os.link(blob, single / "blobs" / "sha256" / blob.name)
    index = json.loads((Path(layout) / "index.json").read_text())
    index["manifests"] = [
        m
        for m in index["manifests"]
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
    ]
    (single / "index.json").write_text(json.dumps(index))
    shutil.copy(Path(layout) / "oci-layout", single / "oci-layout")
    return single


def layer_blobs(ref: str) -> list[Path]:
    out = subprocess.run(
        [sys.executable, "-m", "imgscan", "inspect", ref, "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    layout = Path(ref.removeprefix("oci-dir:").rsplit(":", 1)[0])
    return [
        layout / "blobs" / "sha256" / layer["digest"].split(":")[1] for layer in json.loads(out)["layers"]
    ]


def zlib_decompress_seconds(blobs: list[Path]) -> float:
    start = time.perf_counter()
    for blob in blobs:
        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        with open(blob, "rb") as f:
            while chunk := f.read(1 << 20):
                dec.decompress(chunk)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="an oci-dir: reference; default: build the torch benchmark image")
    args = parser.parse_args()
    ref = args.image or build_image()
    blobs = layer_blobs(ref)
    compressed = sum(b.stat().st_size for b in blobs)
    imgscan = [sys.executable, "-m", "imgscan"]
    syft_env = dict(os.environ, SYFT_CHECK_FOR_APP_UPDATE="false")
    runs = {
        "imgscan inspect": measure([*imgscan, "inspect", ref]),
        "imgscan ls -R": measure([*imgscan, "ls", ref, "-R"]),
        "gzip -dc (floor, 1 core)": measure(
            ["sh", "-c", " ".join(f"gzip -dc {b} >/dev/null;" for b in blobs)]
        ),
    }
    floor = zlib_decompress_seconds(blobs)
    if shutil.which("syft"):
        syft_ref = f"oci-dir:{single_image_layout(ref)}"  # syft's oci-dir takes a layout's only image
        runs["syft (packages, json)"] = measure(["syft", "-q", syft_ref, "-o", "json"], env=syft_env)
    print(
        f"image: {ref}  layers: {len(blobs)}  compressed: {compressed / 2**20:.0f} MiB  "
        f"cores: {os.cpu_count()}"
    )
    print()
    print_table(runs, (f"| Python zlib decompress only (floor, 1 core) | {floor:.1f} | - | - |",))


if __name__ == "__main__":
    main()

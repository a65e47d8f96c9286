"""Index every layer of an image (in parallel processes when there are several) and merge them."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from imgscan.layers.fsview import FileSystem
from imgscan.layers.hostdir import index_hostdir
from imgscan.layers.index import LayerIndex, Limits
from imgscan.layers.merge import merge
from imgscan.layers.squashfs import index_squashfs
from imgscan.layers.tarstream import index_tar
from imgscan.sources.image import HOSTDIR, SQUASHFS, TAR, Image, LayerRef


def layer_label(ref: LayerRef) -> str:
    """How errors name a layer: its index and digest."""
    return f"layer {ref.index} ({ref.digest or ref.diff_id or ref.host_dir or 'squashfs'})"


def index_layer(ref: LayerRef, limits: Limits) -> LayerIndex:
    """Read one layer once, as a stream, into its LayerIndex (runs in a worker process)."""
    if ref.format == TAR:
        assert ref.region is not None
        with ref.region.open() as raw:
            return index_tar(raw, ref.index, limits, ref.digest, ref.diff_id, layer_label(ref))
    if ref.format == SQUASHFS:
        assert ref.region is not None
        return index_squashfs(ref.region, ref.index, limits)
    if ref.format == HOSTDIR:
        assert ref.host_dir is not None
        return index_hostdir(ref.host_dir, ref.index, limits)
    raise AssertionError(f"unknown layer format {ref.format}")


@dataclass
class MergedImage:
    """An image's layers indexed and merged: the view every analyser reads."""

    image: Image
    layers: list[LayerIndex]
    fs: FileSystem
    warnings: list[str]


def _workers(n_layers: int) -> int:
    return max(1, min(n_layers, os.cpu_count() or 1))


def scan_image(image: Image, limits: Limits) -> MergedImage:
    """Index all layers (one process per core, lowest layers first) and merge them in order."""
    workers = _workers(len(image.layers))
    if workers == 1:
        indexes = [index_layer(ref, limits) for ref in image.layers]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            indexes = list(pool.map(index_layer, image.layers, [limits] * len(image.layers)))
    fs, merge_warnings = merge(indexes)
    warnings = [f"layer {ix.layer}: {w}" for ix in indexes for w in ix.warnings] + merge_warnings
    return MergedImage(image, indexes, fs, warnings)

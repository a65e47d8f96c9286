"""Index every layer of an image (in parallel processes when there are several) and merge them."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from imgscan.layers.cache import LayerCache
from imgscan.layers.fsview import FileSystem
from imgscan.layers.hostdir import index_hostdir
from imgscan.layers.index import LayerIndex, Limits
from imgscan.layers.merge import merge
from imgscan.layers.squashfs import index_squashfs
from imgscan.layers.tarstream import index_tar
from imgscan.progress import LayerProgress
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


def _cached(ref: LayerRef, limits: Limits, cache: LayerCache | None) -> LayerIndex | None:
    """A tar layer the config names by diff_id may come from the cache; nothing else can."""
    if cache is None or ref.format != TAR or ref.diff_id is None:
        return None
    return cache.get(ref.diff_id, ref.index, limits)


def _take_indexed(ref: LayerRef) -> LayerIndex | None:
    """The index a source built while reading (used once: merging changes it)."""
    index, ref.indexed = ref.indexed, None
    return index


def _index_all(
    todo: list[LayerRef], limits: Limits, progress: LayerProgress
) -> list[tuple[LayerRef, LayerIndex]]:
    """Index each layer (one process per core when there are several), reporting each as it finishes."""
    if _workers(len(todo)) == 1:
        done = []
        for ref in todo:
            done.append((ref, index_layer(ref, limits)))
            progress.layer_done(ref.size)
        return done
    with ProcessPoolExecutor(max_workers=_workers(len(todo))) as pool:
        futures = {pool.submit(index_layer, ref, limits): ref for ref in todo}
        for future in as_completed(futures):
            future.result()  # the first failure stops the scan
            progress.layer_done(futures[future].size)
        return [(ref, future.result()) for future, ref in futures.items()]


def scan_image(image: Image, limits: Limits, cache: LayerCache | None = None) -> MergedImage:
    """Index all layers (cached ones from cache, the rest one process per core, lowest layers first) and
    merge them in order. Layers a source indexed already (docker:) are taken as they are."""
    found: dict[int, LayerIndex] = {}
    read: list[tuple[LayerRef, LayerIndex]] = []
    todo: list[LayerRef] = []
    for ref in image.layers:
        if (index := _take_indexed(ref)) is not None:
            read.append((ref, index))
        elif (index := _cached(ref, limits, cache)) is not None:
            found[ref.index] = index
        else:
            todo.append(ref)
    progress = LayerProgress(len(todo), sum(ref.size or 0 for ref in todo))
    try:
        read += _index_all(todo, limits, progress)
    finally:
        progress.done()
    for ref, index in read:
        if cache is not None and ref.format == TAR:
            cache.put(index)  # before merge(), which changes the indexes it applies
        found[ref.index] = index
    indexes = [found[ref.index] for ref in image.layers]
    fs, merge_warnings = merge(indexes)
    warnings = [f"layer {ix.layer}: {w}" for ix in indexes for w in ix.warnings] + merge_warnings
    return MergedImage(image, indexes, fs, warnings)
